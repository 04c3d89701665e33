"""Tokens from an identity provider: RS256/ES256 by public key or by a JWKS served on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.core.config import ConfigurationError, load_settings
from app.core.errors import IdentityProviderUnavailable, NotAuthenticated
from app.core.security import TokenVerifier, create_token

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
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

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
