"""Bearer tokens, verified with PyJWT.

- HS256 with the service's secret (``AVATAR_JWT_SECRET``, or in development one generated once).
- RS256 / ES256 from an identity provider: its public key (``AVATAR_JWT_PUBLIC_KEY``) or its JWKS
  (``AVATAR_JWKS_URL``, cached, fetched again when a token names an unknown ``kid``).

Always an explicit algorithm list, the key chosen by the algorithm family (so an HS256 token
"signed" with a public key never verifies), ``exp`` and ``sub`` required, ``iss`` and ``aud``
checked when configured. ``exp``, ``nbf`` and ``iat`` must be JSON numbers (RFC 7519
NumericDates, not strings or booleans), and ``exp`` at most ``AVATAR_JWT_MAX_LIFETIME_SECONDS``
ahead. A token is hostile input: anything malformed in it is a 401, never a 500.

User ids (a token's ``sub``, a path's ``{user_id}``) are compared in Unicode NFC, so the same
looking id is one user whichever form a client sends; see ``normalize_user_id`` for the rules.
"""

from __future__ import annotations

import ipaddress
import math
import time
import unicodedata
from typing import Any

import jwt

from app.core.config import Settings
from app.core.errors import AppError, IdentityProviderUnavailable, NotAuthenticated

# The user id ends up in database rows, paths and logs; keep it a bounded, printable string.
MAX_USER_ID_LENGTH = 255
# Ids no public URL can name: `/users/me/avatar` is the caller's own, and clients resolve
# `.` and `..` path segments before sending.
RESERVED_USER_IDS = frozenset({"me", ".", ".."})
USER_ID_RULES = (
    f"a user id is 1 to {MAX_USER_ID_LENGTH} printable characters (in NFC), without '/', "
    "and not 'me', '.' or '..'"
)
ASYMMETRIC = {"RS256", "ES256"}
NUMERIC_DATES = ("exp", "nbf", "iat")


def create_token(settings: Settings, user_id: str, *, ttl_seconds: int | None = None) -> str:
    user_id = normalize_user_id(user_id)
    now = int(time.time())
    ttl = ttl_seconds if ttl_seconds is not None else settings.token_ttl_seconds
    if ttl > settings.jwt_max_lifetime_seconds:
        raise ValueError(
            f"a token may live at most AVATAR_JWT_MAX_LIFETIME_SECONDS "
            f"({settings.jwt_max_lifetime_seconds} s)"
        )
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.signing_secret(), algorithm="HS256")


class TokenVerifier:
    """Built once per app; ``verify`` may fetch a JWKS, so call it off the event loop when
    ``needs_network`` is true."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.algorithms = set(settings.jwt_algorithms)
        self.secret = settings.signing_secret() if settings.hs256_enabled else None
        if not settings.hs256_enabled:
            self.algorithms.discard("HS256")
        self.public_key = settings.jwt_public_key or None
        self.jwks = (
            jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=settings.jwks_cache_seconds,
                timeout=5,
                cooldown_duration=settings.jwks_refresh_cooldown_seconds,
            )
            if settings.jwks_url
            else None
        )
        if self.public_key is None and self.jwks is None:
            self.algorithms -= ASYMMETRIC

    @property
    def needs_network(self) -> bool:
        return self.jwks is not None

    def verify(self, token: str) -> str:
        """Return the (NFC) user id of a valid token; raise NotAuthenticated for anything else,
        IdentityProviderUnavailable when the provider's keys cannot be fetched."""
        try:
            return self._verify(token)
        except AppError:
            raise
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("The bearer token has expired.") from None
        except Exception:
            # Every part of a token is chosen by the client. Whatever in it makes PyJWT, the
            # JSON parser or a key fail (a list where a string belongs, nesting deep enough for
            # a RecursionError, a number too large for a float) is an invalid token.
            raise NotAuthenticated("The bearer token is invalid.") from None

    def _verify(self, token: str) -> str:
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise NotAuthenticated("The bearer token's algorithm is not accepted.")
        if not isinstance(header.get("kid", ""), str):
            raise NotAuthenticated("The bearer token's key id is not a string.")
        claims = jwt.decode(
            token,
            self._key_for(algorithm, token),
            algorithms=[algorithm],
            options={"require": ["exp", "sub"]},
            issuer=self.settings.jwt_issuer or None,
            audience=self.settings.jwt_audience or None,
        )
        self._check_times(claims)
        user_id = claims["sub"]
        if not isinstance(user_id, str):
            raise NotAuthenticated("The bearer token's subject is not a string.")
        try:
            return normalize_user_id(user_id)
        except ValueError:
            raise NotAuthenticated("The bearer token's subject is not a valid user id.") from None

    def _check_times(self, claims: dict[str, Any]) -> None:
        """PyJWT reads NumericDates with ``int()``, so ``"4000000000"`` and ``true`` pass and
        ``exp: 1e308`` never expires: insist on numbers, and on a bounded lifetime."""
        for name in NUMERIC_DATES:
            if name in claims and not is_numeric_date(claims[name]):
                raise NotAuthenticated(f"The bearer token's {name} is not a number.")
        if claims["exp"] > time.time() + self.settings.jwt_max_lifetime_seconds:
            raise NotAuthenticated(
                "The bearer token lives longer than this service accepts "
                f"({self.settings.jwt_max_lifetime_seconds} s)."
            )

    def _key_for(self, algorithm: str, token: str) -> Any:
        if algorithm == "HS256":
            return self.secret
        if self.jwks is not None:
            try:
                return self.jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError:
                raise IdentityProviderUnavailable(
                    "The identity provider's keys cannot be fetched; retry later."
                ) from None
            except jwt.PyJWTError:
                raise NotAuthenticated("The bearer token's key is unknown.") from None
        return self.public_key


def is_numeric_date(value: object) -> bool:
    """A JSON number that is a finite time (``bool`` is an ``int`` in Python, not in JSON)."""
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def normalize_user_id(user_id: str) -> str:
    """The canonical (NFC) form of a user id; ``ValueError`` when it is not a valid one.

    Valid: 1 to ``MAX_USER_ID_LENGTH`` characters after NFC normalisation, all printable (no
    control characters such as NUL or newline, no format characters such as bidi overrides or
    zero-width joiners, no separators but the ASCII space), no ``/`` (a path segment could not
    carry it), and none of ``RESERVED_USER_IDS``."""
    if not isinstance(user_id, str) or len(user_id) > 4 * MAX_USER_ID_LENGTH:
        raise ValueError(USER_ID_RULES)  # bounds the normalisation's work
    user_id = unicodedata.normalize("NFC", user_id)
    if (
        not user_id
        or len(user_id) > MAX_USER_ID_LENGTH
        or not user_id.isprintable()
        or "/" in user_id
        or user_id in RESERVED_USER_IDS
    ):
        raise ValueError(USER_ID_RULES)
    return user_id


def is_loopback_address(host: str) -> bool:
    """True for an address only this machine can reach (``127.0.0.0/8``, ``::1``,
    ``localhost``); false for everything else, wildcard addresses and names included."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback
