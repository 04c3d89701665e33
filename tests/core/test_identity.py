"""Tokens from an identity provider: RS256/ES256 by public key or by a JWKS served on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from app.core.config import ConfigurationError, load_settings
from app.core.errors import IdentityProviderUnavailable, NotAuthenticated
from app.core.security import TokenVerifier, create_token
from tests.security.fuzz_settings import fuzz_settings

ISSUER = "https://id.example.test/"
AUDIENCE = "avatar-service"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(key, kid: str, alg: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    data = json.loads(algorithm.to_jwk(key.public_key()))
    data.update({"kid": kid, "alg": alg, "use": "sig"})
    return data


def token(key, alg: str, *, kid: str | None = None, **claims) -> str:
    payload = {"sub": "alice", "exp": int(time.time()) + 60, "iss": ISSUER, "aud": AUDIENCE}
    payload.update(claims)
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


class JwksServer:
    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


def settings_for(tmp_path, **values):
    base = {
        "_env_file": None,
        "data_dir": tmp_path,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwks_refresh_cooldown_seconds": 0,
    }
    base.update(values)
    return load_settings(**base)


def test_rs256_with_public_key(tmp_path) -> None:
    key = rsa_key()
    verifier = TokenVerifier(settings_for(tmp_path, jwt_public_key=public_pem(key)))
    assert verifier.verify(token(key, "RS256")) == "alice"
    with pytest.raises(NotAuthenticated):
        verifier.verify(token(rsa_key(), "RS256"))  # someone else's key


def test_es256_with_public_key(tmp_path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier(settings_for(tmp_path, jwt_public_key=public_pem(key)))
    assert verifier.verify(token(key, "ES256")) == "alice"


def test_hs256_signed_with_the_public_key_is_refused(tmp_path) -> None:
    key = rsa_key()
    pem = public_pem(key)
    verifier = TokenVerifier(settings_for(tmp_path, jwt_public_key=pem, jwt_secret="s" * 64))

    # The classic confusion attack: HMAC over the token with the public key as the secret.
    # PyJWT refuses to make one, so it is made by hand.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"sub": "alice", "exp": int(time.time()) + 60, "iss": ISSUER, "aud": AUDIENCE}
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    forged = signing_input + "." + b64(signature)
    with pytest.raises(NotAuthenticated):
        verifier.verify(forged)


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://evil.example.test/"},
        {"aud": "another-service"},
        {"exp": int(time.time()) - 10},
        {"nbf": int(time.time()) + 600},
    ],
)
def test_issuer_audience_and_times_are_checked(tmp_path, claims) -> None:
    key = rsa_key()
    verifier = TokenVerifier(settings_for(tmp_path, jwt_public_key=public_pem(key)))
    with pytest.raises(NotAuthenticated):
        verifier.verify(token(key, "RS256", **claims))


def test_jwks_is_cached_and_refreshed_on_unknown_kid(tmp_path, jwks: JwksServer) -> None:
    first, second = rsa_key(), ec.generate_private_key(ec.SECP256R1())
    jwks.keys = [jwk(first, "k1", "RS256")]
    verifier = TokenVerifier(settings_for(tmp_path, jwks_url=jwks.url))
    assert verifier.needs_network
    assert verifier.verify(token(first, "RS256", kid="k1")) == "alice"
    assert verifier.verify(token(first, "RS256", kid="k1", sub="bob")) == "bob"
    assert jwks.fetches == 1  # cached

    jwks.keys = [jwk(first, "k1", "RS256"), jwk(second, "k2", "ES256")]  # the IdP rotates
    assert verifier.verify(token(second, "ES256", kid="k2")) == "alice"
    assert jwks.fetches == 2

    with pytest.raises(NotAuthenticated):
        verifier.verify(token(rsa_key(), "RS256", kid="k3"))


def test_unreachable_jwks_is_503_not_401(tmp_path) -> None:
    verifier = TokenVerifier(settings_for(tmp_path, jwks_url="http://127.0.0.1:9/jwks.json"))
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(token(rsa_key(), "RS256", kid="k1"))


def test_asymmetric_tokens_refused_without_a_key(tmp_path) -> None:
    verifier = TokenVerifier(settings_for(tmp_path))
    with pytest.raises(NotAuthenticated, match="algorithm"):
        verifier.verify(token(rsa_key(), "RS256"))


def test_service_tokens_still_work_beside_the_idp(tmp_path) -> None:
    settings = settings_for(
        tmp_path, jwt_public_key=public_pem(rsa_key()), jwt_secret="configured-" + "c" * 40
    )
    assert TokenVerifier(settings).verify(create_token(settings, "carol")) == "carol"


@pytest.mark.parametrize("provider", ["public_key", "jwks"])
def test_the_generated_secret_never_signs_beside_an_identity_provider(
    tmp_path, jwks: JwksServer, provider: str
) -> None:
    """A development data folder has a generated secret; once a provider is configured it is
    no key at all, so tokens an attacker signs with it (read from a leaked folder, or one left
    from development) are refused, and the service mints none."""
    plain = settings_for(tmp_path)
    generated = plain.signing_secret()  # the folder holds a generated secret
    key = {"public_key": {"jwt_public_key": public_pem(rsa_key())}, "jwks": {"jwks_url": jwks.url}}
    settings = settings_for(tmp_path, **key[provider])
    assert settings.env == "development" and not settings.hs256_enabled
    verifier = TokenVerifier(settings)
    assert "HS256" not in verifier.algorithms
    claims = {"sub": "alice", "exp": int(time.time()) + 60, "iss": ISSUER, "aud": AUDIENCE}
    with pytest.raises(NotAuthenticated, match="algorithm"):
        verifier.verify(jwt.encode(claims, generated, algorithm="HS256"))
    with pytest.raises(ConfigurationError):
        create_token(settings, "alice")


def test_production_with_only_a_jwks_url_starts(tmp_path) -> None:
    settings = settings_for(tmp_path, env="production", jwks_url="https://id.example.test/jwks")
    verifier = TokenVerifier(settings)
    assert "HS256" not in verifier.algorithms
    assert not (tmp_path / "jwt-secret").exists()


async def test_jwks_token_through_the_api(tmp_path, sqlite_url, jwks: JwksServer) -> None:
    from tests.conftest import make_settings, running_app

    key = rsa_key()
    jwks.keys = [jwk(key, "api", "RS256")]
    settings = make_settings(
        tmp_path,
        database_url=sqlite_url,
        jwks_url=jwks.url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    async with running_app(settings) as (client, _auth):
        headers = {"Authorization": f"Bearer {token(key, 'RS256', kid='api', sub='dave')}"}
        response = await client.get("/users/me/avatar", headers=headers)
        assert response.status_code == 404  # authenticated as dave, who has no avatar
        assert response.json()["code"] == "avatar_not_found"
        other = {"Authorization": f"Bearer {token(rsa_key(), 'RS256', kid='api')}"}
        assert (await client.get("/users/me/avatar", headers=other)).status_code == 401


# Malformed tokens, each signed correctly for the setup it is tried on, so that every check
# after the signature is reached too. Every one must be a NotAuthenticated (401), never another
# exception (a 500), whichever keys the service has.
SETUPS = ("secret", "public_key", "jwks")
HS_SECRET = "identity-secret-" + "h" * 40


@dataclass
class Setup:
    verifier: TokenVerifier
    alg: str
    key: object  # what signs: the HS256 secret or the provider's private key
    kid: str | None

    def sign(self, header: bytes | dict, payload: bytes | dict) -> str:
        """A token whose header and payload are exactly these bytes (or this JSON)."""

        def b64(part: bytes | dict) -> str:
            raw = part if isinstance(part, bytes) else json.dumps(part).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        signing_input = f"{b64(header)}.{b64(payload)}".encode()
        if self.alg == "HS256":
            signature = hmac.new(self.key.encode(), signing_input, hashlib.sha256).digest()  # type: ignore[attr-defined]
        else:
            signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[attr-defined]
        return f"{signing_input.decode()}.{b64(signature)}"

    def header(self, **fields: object) -> dict:
        header: dict[str, object] = {"alg": self.alg, "typ": "JWT"}
        if self.kid:
            header["kid"] = self.kid
        header.update(fields)
        return header

    def claims(self, **fields: object) -> dict:
        claims = {"sub": "alice", "exp": int(time.time()) + 60, "iss": ISSUER, "aud": AUDIENCE}
        claims.update(fields)
        return claims


@pytest.fixture(scope="module")
def provider() -> rsa.RSAPrivateKey:
    return rsa_key()


@pytest.fixture
def setups(tmp_path, jwks: JwksServer, provider: rsa.RSAPrivateKey) -> dict[str, Setup]:
    jwks.keys = [jwk(provider, "k1", "RS256")]
    return {
        "secret": Setup(
            TokenVerifier(settings_for(tmp_path, jwt_secret=HS_SECRET)), "HS256", HS_SECRET, None
        ),
        "public_key": Setup(
            TokenVerifier(settings_for(tmp_path, jwt_public_key=public_pem(provider))),
            "RS256",
            provider,
            None,
        ),
        "jwks": Setup(
            TokenVerifier(settings_for(tmp_path, jwks_url=jwks.url)), "RS256", provider, "k1"
        ),
    }


DEEP = b"[" * 100_000 + b"]" * 100_000
MALFORMED: dict[str, Callable[[Setup], str]] = {
    "alg-a-list": lambda s: s.sign(s.header(alg=[s.alg]), s.claims()),
    "alg-an-object": lambda s: s.sign(s.header(alg={"name": s.alg}), s.claims()),
    "alg-null": lambda s: s.sign(s.header(alg=None), s.claims()),
    "alg-a-number": lambda s: s.sign(s.header(alg=256), s.claims()),
    "alg-missing": lambda s: s.sign({"typ": "JWT"}, s.claims()),
    "kid-a-list": lambda s: s.sign(s.header(kid=["k1"]), s.claims()),
    "kid-an-object": lambda s: s.sign(s.header(kid={"id": "k1"}), s.claims()),
    "kid-a-number": lambda s: s.sign(s.header(kid=1), s.claims()),
    "crit-an-object": lambda s: s.sign(s.header(crit={"exp": 1}), s.claims()),
    "crit-unknown": lambda s: s.sign(s.header(crit=["x-unknown"], **{"x-unknown": 1}), s.claims()),
    "b64-false": lambda s: s.sign(s.header(b64=False, crit=["b64"]), s.claims()),
    "header-a-list": lambda s: s.sign(b"[1, 2]", s.claims()),
    "header-a-string": lambda s: s.sign(b'"HS256"', s.claims()),
    "header-nested-deeply": lambda s: s.sign(b'{"x": ' + DEEP + b', "alg": "HS256"}', s.claims()),
    "header-not-utf8": lambda s: s.sign(b'{"alg": "\xff\xfe"}', s.claims()),
    "header-huge-number": lambda s: s.sign(b'{"alg": "RS256", "n": 1' + b"0" * 5000 + b"}", {}),
    "payload-a-list": lambda s: s.sign(s.header(), b"[1]"),
    "payload-a-number": lambda s: s.sign(s.header(), b"1e999"),
    "payload-nested-deeply": lambda s: s.sign(s.header(), b'{"sub": "a", "x": ' + DEEP + b"}"),
    "payload-not-json": lambda s: s.sign(s.header(), b"{sub: alice}"),
    "payload-not-utf8": lambda s: s.sign(s.header(), b'{"sub": "\xc3\x28"}'),
    "exp-infinity": lambda s: s.sign(s.header(), b'{"sub": "alice", "exp": Infinity}'),
    "exp-nan": lambda s: s.sign(s.header(), b'{"sub": "alice", "exp": NaN}'),
    "exp-huge": lambda s: s.sign(s.header(), b'{"sub": "alice", "exp": 1' + b"0" * 400 + b"}"),
    "exp-a-string": lambda s: s.sign(s.header(), s.claims(exp=str(int(time.time()) + 60))),
    "exp-1e308": lambda s: s.sign(s.header(), s.claims(exp=1e308)),
    "nbf-an-object": lambda s: s.sign(s.header(), s.claims(nbf={"a": 1})),
    "iat-a-list": lambda s: s.sign(s.header(), s.claims(iat=[1])),
    "iss-a-list": lambda s: s.sign(s.header(), s.claims(iss=[ISSUER])),
    "iss-an-object": lambda s: s.sign(s.header(), s.claims(iss={"a": ISSUER})),
    "aud-an-object": lambda s: s.sign(s.header(), s.claims(aud={"a": AUDIENCE})),
    "aud-a-nested-list": lambda s: s.sign(s.header(), s.claims(aud=[[AUDIENCE]])),
    "sub-a-list": lambda s: s.sign(s.header(), s.claims(sub=["alice"])),
    "sub-me": lambda s: s.sign(s.header(), s.claims(sub="me")),
    "sub-with-a-nul": lambda s: s.sign(s.header(), s.claims(sub="alice\x00")),
    "jti-an-object": lambda s: s.sign(s.header(), s.claims(jti={"a": 1})),
    "one-segment": lambda s: s.sign(s.header(), s.claims()).split(".")[0],
    "four-segments": lambda s: s.sign(s.header(), s.claims()) + ".AAAA",
    "non-ascii": lambda s: s.sign(s.header(), s.claims()) + "\u00e9",
    "empty": lambda s: "",
}


def test_the_malformed_tokens_start_from_tokens_that_work(setups: dict[str, Setup]) -> None:
    for setup in setups.values():
        assert setup.verifier.verify(setup.sign(setup.header(), setup.claims())) == "alice"


@pytest.mark.parametrize("setup_name", SETUPS)
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_token_is_401_in_every_key_setup(
    setups: dict[str, Setup], setup_name: str, case: str
) -> None:
    setup = setups[setup_name]
    with pytest.raises(NotAuthenticated):
        setup.verifier.verify(MALFORMED[case](setup))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HEADER_FIELDS = st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "jwk", "x5u", "cty"])
CLAIMS = st.sampled_from(["sub", "exp", "nbf", "iat", "iss", "aud", "jti"])


@pytest.mark.parametrize("setup_name", SETUPS)
@fuzz_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.dictionaries(HEADER_FIELDS, JSON, max_size=3),
    claims=st.dictionaries(CLAIMS, JSON, max_size=4),
)
def test_any_header_and_claims_give_a_user_or_401(
    setups: dict[str, Setup], setup_name: str, header: dict, claims: dict
) -> None:
    """Well-formed JSON of any shape in the header and the claims, correctly signed."""
    setup = setups[setup_name]
    token = setup.sign(setup.header(**header), setup.claims(**claims))
    try:
        user_id = setup.verifier.verify(token)
    except NotAuthenticated:
        return
    assert isinstance(user_id, str) and user_id
