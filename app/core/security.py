"""Bearer tokens: PyJWT with an explicit algorithm list, ``exp`` required, ``sub`` the user id."""

from __future__ import annotations

import time

import jwt

from app.core.config import Settings
from app.core.errors import NotAuthenticated

# The user id ends up in database rows and logs; keep it a bounded, printable string.
MAX_USER_ID_LENGTH = 255


def create_token(settings: Settings, user_id: str, *, ttl_seconds: int | None = None) -> str:
    validate_user_id(user_id)
    now = int(time.time())
    ttl = ttl_seconds if ttl_seconds is not None else settings.token_ttl_seconds
    claims = {"sub": user_id, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, settings.signing_secret(), algorithm="HS256")


def decode_token(settings: Settings, token: str) -> str:
    """Return the user id of a valid token; raise NotAuthenticated for anything else."""
    try:
        claims = jwt.decode(
            token,
            settings.signing_secret(),
            algorithms=settings.jwt_algorithms,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise NotAuthenticated("The bearer token has expired.") from None
    except jwt.PyJWTError:
        raise NotAuthenticated("The bearer token is invalid.") from None
    user_id = claims["sub"]
    if not isinstance(user_id, str):
        raise NotAuthenticated("The bearer token's subject is not a string.")
    try:
        validate_user_id(user_id)
    except ValueError:
        raise NotAuthenticated("The bearer token's subject is not a valid user id.") from None
    return user_id


def validate_user_id(user_id: str) -> None:
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH or not user_id.isprintable():
        raise ValueError(f"a user id is 1 to {MAX_USER_ID_LENGTH} printable characters")
