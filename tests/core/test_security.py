from __future__ import annotations

import time

import jwt
import pytest

from app.core.config import ConfigurationError, load_settings
from app.core.errors import NotAuthenticated
from app.core.security import TokenVerifier, create_token, normalize_user_id

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


def signed(claims: dict, header: dict | None = None) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256", headers=header)


def in_a_minute() -> int:
    return int(time.time()) + 60


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": str(in_a_minute())},  # a numeric string: PyJWT's int() would take it
        {"exp": f"{in_a_minute()}.0"},
        {"exp": True},
        {"exp": [in_a_minute()]},
        {"exp": {"at": in_a_minute()}},
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"exp": 1e308},  # valid for ever
        {"exp": 4_000_000_000},  # in 2096
        {"exp": 10**400},
        {"nbf": str(int(time.time()) - 60)},
        {"nbf": False},
        {"iat": str(int(time.time()))},
        {"iat": True},
        {"iat": None},
    ],
)
def test_time_claims_must_be_numbers_and_exp_bounded(settings, claims) -> None:
    token = signed({"sub": "u", "exp": in_a_minute(), **claims})
    with pytest.raises(NotAuthenticated):
        TokenVerifier(settings).verify(token)


def test_lifetime_is_capped_by_the_setting(tmp_path) -> None:
    settings = load_settings(
        _env_file=None,
        jwt_secret=SECRET,
        data_dir=tmp_path,
        token_ttl_seconds=60,
        jwt_max_lifetime_seconds=600,
    )
    verifier = TokenVerifier(settings)
    now = time.time()
    assert verifier.verify(signed({"sub": "u", "exp": int(now) + 500, "iat": now})) == "u"
    assert verifier.verify(signed({"sub": "u", "exp": now + 500.5, "nbf": now - 1})) == "u"
    with pytest.raises(NotAuthenticated, match="longer"):
        verifier.verify(signed({"sub": "u", "exp": int(now) + 700}))
    with pytest.raises(ValueError, match="AVATAR_JWT_MAX_LIFETIME_SECONDS"):
        create_token(settings, "u", ttl_seconds=700)


def test_token_ttl_above_the_lifetime_cap_is_a_configuration_error(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="AVATAR_JWT_MAX_LIFETIME_SECONDS"):
        load_settings(
            _env_file=None, data_dir=tmp_path, token_ttl_seconds=7200, jwt_max_lifetime_seconds=60
        )


@pytest.mark.parametrize(
    "sub",
    ["me", ".", "..", "a/b", "/", "bob\x00", "\x00", "tab\there", "bob\u202e", "zero\u200bwidth",
     "\ud800", "x" * 256, "e\u0301" * 256],
)  # fmt: skip
def test_subjects_that_are_no_user_id_are_refused(settings, sub) -> None:
    with pytest.raises(NotAuthenticated, match="user id"):
        TokenVerifier(settings).verify(signed({"sub": sub, "exp": in_a_minute()}))


def test_user_ids_are_one_user_in_nfc_and_nfd(settings) -> None:
    nfc, nfd = "Jos\u00e9", "Jose\u0301"
    verifier = TokenVerifier(settings)
    assert verifier.verify(signed({"sub": nfd, "exp": in_a_minute()})) == nfc
    assert verifier.verify(signed({"sub": nfc, "exp": in_a_minute()})) == nfc
    assert verifier.verify(create_token(settings, nfd)) == nfc
    assert normalize_user_id("a b@example.com|42") == "a b@example.com|42"
    assert normalize_user_id("Me") == "Me" and normalize_user_id("...") == "..."
