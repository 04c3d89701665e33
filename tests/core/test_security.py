from __future__ import annotations

import time

import jwt
import pytest

from app.core.config import load_settings
from app.core.errors import NotAuthenticated
from app.core.security import TokenVerifier, create_token

SECRET = "s" * 64


@pytest.fixture
def settings(tmp_path):
    return load_settings(_env_file=None, jwt_secret=SECRET, data_dir=tmp_path)


def test_round_trip(settings) -> None:
    assert TokenVerifier(settings).verify(create_token(settings, "user-42")) == "user-42"


def test_token_expires(settings) -> None:
    with pytest.raises(NotAuthenticated, match="expired"):
        TokenVerifier(settings).verify(create_token(settings, "u", ttl_seconds=-1))


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "u"},  # no exp
        {"exp": 4_000_000_000},  # no sub
        {"sub": 42, "exp": 4_000_000_000},  # sub not a string
        {"sub": "", "exp": 4_000_000_000},
        {"sub": "x" * 300, "exp": 4_000_000_000},
    ],
)
def test_required_claims(settings, claims) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(NotAuthenticated):
        TokenVerifier(settings).verify(token)


def test_alg_none_is_refused(settings) -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(NotAuthenticated):
        TokenVerifier(settings).verify(token)


def test_other_algorithm_is_refused(settings) -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, SECRET, algorithm="HS512")
    with pytest.raises(NotAuthenticated):
        TokenVerifier(settings).verify(token)


def test_forged_signature_is_refused(settings) -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, "t" * 64, algorithm="HS256")
    with pytest.raises(NotAuthenticated):
        TokenVerifier(settings).verify(token)
