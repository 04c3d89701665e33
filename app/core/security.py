"""Bearer tokens, verified with PyJWT.

- HS256 with the service's secret (``AVATAR_JWT_SECRET``, or in development one generated once).
- RS256 / ES256 from an identity provider: its public key (``AVATAR_JWT_PUBLIC_KEY``) or its JWKS
  (``AVATAR_JWKS_URL``, cached, fetched again when a token names an unknown ``kid``).

Always an explicit algorithm list, the key chosen by the algorithm family (so an HS256 token
"signed" with a public key never verifies), ``exp`` and ``sub`` required, ``iss`` and ``aud``
checked when configured.
"""

from __future__ import annotations

import ipaddress
import time

import jwt

from app.core.config import Settings
from app.core.errors import IdentityProviderUnavailable, NotAuthenticated

# The user id ends up in database rows and logs; keep it a bounded, printable string.
MAX_USER_ID_LENGTH = 255
ASYMMETRIC = {"RS256", "ES256"}


def create_token(settings: Settings, user_id: str, *, ttl_seconds: int | None = None) -> str:
    validate_user_id(user_id)
    now = int(time.time())
    ttl = ttl_seconds if ttl_seconds is not None else settings.token_ttl_seconds
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
        """Return the user id of a valid token; raise NotAuthenticated for anything else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise NotAuthenticated("The bearer token is invalid.") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise NotAuthenticated("The bearer token's algorithm is not accepted.")
        try:
            claims = jwt.decode(
                token,
                self._key_for(algorithm, token),
                algorithms=[algorithm],
                options={"require": ["exp", "sub"]},
                issuer=self.settings.jwt_issuer or None,
                audience=self.settings.jwt_audience or None,
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("The bearer token has expired.") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise NotAuthenticated("The bearer token is invalid.") from None
        user_id = claims["sub"]
        if not isinstance(user_id, str):
            raise NotAuthenticated("The bearer token's subject is not a string.")
        try:
            validate_user_id(user_id)
        except ValueError:
            raise NotAuthenticated("The bearer token's subject is not a valid user id.") from None
        return user_id

    def _key_for(self, algorithm: str, token: str) -> object:
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


def validate_user_id(user_id: str) -> None:
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH or not user_id.isprintable():
        raise ValueError(f"a user id is 1 to {MAX_USER_ID_LENGTH} printable characters")


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
