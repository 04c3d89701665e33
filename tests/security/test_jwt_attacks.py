"""Token attacks through the HTTP API: every one is a 401 and changes nothing.

The service here trusts two kinds of token, as a deployment with an identity provider does:
HS256 with its own secret, and RS256 from the provider's public key, with ``iss`` and ``aud``
required. Alice and Bob each have an avatar. Each attack below is a token an attacker can make
(mostly claiming to be Bob) and is tried on every route that reads or changes "my" avatar:
``POST``, ``PATCH``, ``DELETE`` and ``GET /users/me/avatar``. Each must answer 401
``not_authenticated`` with ``WWW-Authenticate: Bearer``, and afterwards every stored file and
every row must be byte-for-byte what it was.

Then a valid token for Alice is pointed at Bob's avatar every way the API could be asked to:
other methods on Bob's public URLs, paths that climb out of ``/users/me``, and a ``user_id``
smuggled in a query, a header, a form field or a JSON body. None reaches Bob's avatar.

(tests/core/test_security.py and tests/core/test_identity.py cover the verifier alone.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.core.config import Settings
from app.core.security import create_token
from app.db.migrate import upgrade
from app.main import create_app
from app.storage import build_storage
from app.storage.base import Storage
from tests.client import assert_problem
from tests.conftest import TEST_SECRET, make_settings, serving
from tests.images import jpeg_with_metadata
from tests.services.support import store_snapshot, table_snapshot

ISSUER = "https://id.example.test/"
AUDIENCE = "avatar-service"


def b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_by_hand(claims: dict, key: bytes, alg: str = "HS256") -> str:
    """HMAC with any bytes as the key (PyJWT refuses a PEM public key as an HMAC secret,
    which is exactly what an attacker would use)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def with_header(header: dict, claims: dict) -> str:
    """Correctly signed with the service's secret, whatever the header says."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    signature = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned(claims: dict, alg: str = "none", signature: str = "") -> str:
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}.{signature}"


@dataclass
class Keys:
    provider: rsa.RSAPrivateKey  # the identity provider's: the service trusts its public key
    attacker: rsa.RSAPrivateKey
    attacker_ec: ec.EllipticCurvePrivateKey
    settings: Settings

    @property
    def public_pem(self) -> bytes:
        return self.provider.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def claims(self, sub: Any = "bob", **changes: Any) -> dict:
        now = int(time.time())
        claims = {"sub": sub, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not DROP}

    def provider_token(self, sub: Any = "bob", *, headers: dict | None = None, **changes) -> str:
        return jwt.encode(self.claims(sub, **changes), self.provider, "RS256", headers=headers)


DROP = object()  # a claim left out


def _tampered_payload(keys: Keys) -> str:
    """Alice's genuine token with its payload swapped for one that says Bob."""
    header, _payload, signature = keys.provider_token("alice").split(".")
    return f"{header}.{b64(keys.claims('bob'))}.{signature}"


def _flipped_signature(keys: Keys) -> str:
    header, payload, signature = keys.provider_token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[-1] ^= 1
    return f"{header}.{payload}.{b64(bytes(raw))}"


def _attacker_jwk_header(keys: Keys) -> str:
    """The attacker's own public key embedded in the header (CVE-2018-0114 style)."""
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys.attacker.public_key()))
    return jwt.encode(keys.claims(), keys.attacker, "RS256", headers={"jwk": public})


ATTACKS: dict[str, Callable[[Keys], str]] = {
    "alg-none": lambda k: unsigned(k.claims()),
    "alg-None": lambda k: unsigned(k.claims(), alg="None"),
    "alg-NONE": lambda k: unsigned(k.claims(), alg="NONE"),
    "alg-none-with-a-signature": lambda k: unsigned(
        k.claims(), signature=k.provider_token().split(".")[2]
    ),
    "hs256-signed-with-the-public-key-pem": lambda k: hs256_by_hand(k.claims(), k.public_pem),
    "hs256-signed-with-the-public-key-pem-stripped": lambda k: hs256_by_hand(
        k.claims(), k.public_pem.strip()
    ),
    "hs256-signed-with-the-public-key-der": lambda k: hs256_by_hand(
        k.claims(),
        k.provider.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ),
    "hs256-wrong-secret": lambda k: hs256_by_hand(k.claims(), b"guessed-secret-" + b"g" * 40),
    "hs256-empty-secret": lambda k: hs256_by_hand(k.claims(), b""),
    "hs512-right-secret": lambda k: hs256_by_hand(k.claims(), TEST_SECRET.encode(), "HS512"),
    "hs384-right-secret": lambda k: hs256_by_hand(k.claims(), TEST_SECRET.encode(), "HS384"),
    "rs256-attacker-key": lambda k: jwt.encode(k.claims(), k.attacker, "RS256"),
    "rs256-attacker-key-embedded-jwk": _attacker_jwk_header,
    "rs256-attacker-key-jku": lambda k: jwt.encode(
        k.claims(), k.attacker, "RS256", headers={"jku": "http://127.0.0.1:9/jwks.json"}
    ),
    "rs256-attacker-key-kid-injection": lambda k: jwt.encode(
        k.claims(), k.attacker, "RS256", headers={"kid": "../../../dev/null' OR '1'='1"}
    ),
    "es256-attacker-key": lambda k: jwt.encode(k.claims(), k.attacker_ec, "ES256"),
    "ps256-provider-key": lambda k: jwt.encode(k.claims(), k.provider, "PS256"),
    "signature-stripped": lambda k: k.provider_token().rsplit(".", 1)[0] + ".",
    "signature-flipped": _flipped_signature,
    "payload-swapped-alice-to-bob": _tampered_payload,
    "expired": lambda k: k.provider_token(exp=int(time.time()) - 3600),
    "expired-a-few-seconds-ago": lambda k: k.provider_token(exp=int(time.time()) - 5),
    "not-yet-valid-nbf": lambda k: k.provider_token(nbf=int(time.time()) + 3600),
    "issued-in-the-future-iat": lambda k: k.provider_token(iat=int(time.time()) + 3600),
    "exp-not-a-number": lambda k: k.provider_token(exp="tomorrow"),
    "no-exp": lambda k: k.provider_token(exp=DROP),
    "exp-a-numeric-string": lambda k: k.provider_token(exp=str(int(time.time()) + 600)),
    "exp-true": lambda k: k.provider_token(exp=True),
    "exp-1e308-valid-for-ever": lambda k: k.provider_token(exp=1e308),
    "exp-past-the-lifetime-cap": lambda k: k.provider_token(exp=int(time.time()) + 400 * 86400),
    "nbf-a-numeric-string": lambda k: k.provider_token(nbf=str(int(time.time()) - 60)),
    "iat-a-numeric-string": lambda k: k.provider_token(iat=str(int(time.time()))),
    "alg-a-list": lambda k: with_header({"alg": ["HS256"], "typ": "JWT"}, k.claims()),
    "alg-an-object": lambda k: with_header({"alg": {"HS256": 1}, "typ": "JWT"}, k.claims()),
    "kid-an-object": lambda k: with_header({"alg": "HS256", "kid": {"id": 1}}, k.claims()),
    "wrong-audience": lambda k: k.provider_token(aud="another-service"),
    "audience-list-without-us": lambda k: k.provider_token(aud=["a", "b"]),
    "no-audience": lambda k: k.provider_token(aud=DROP),
    "wrong-issuer": lambda k: k.provider_token(iss="https://evil.example.test/"),
    "no-issuer": lambda k: k.provider_token(iss=DROP),
    "hs256-service-secret-wrong-issuer": lambda k: jwt.encode(
        k.claims(iss="https://evil.example.test/"), TEST_SECRET, "HS256"
    ),
    "no-sub": lambda k: k.provider_token(sub=DROP),
    "sub-not-a-string": lambda k: k.provider_token(sub=42),
    "sub-empty": lambda k: k.provider_token(sub=""),
    "sub-with-a-newline": lambda k: k.provider_token(sub="bob\nadmin"),
    "sub-too-long": lambda k: k.provider_token(sub="b" * 300),
    "sub-me": lambda k: k.provider_token(sub="me"),
    "sub-with-a-slash": lambda k: k.provider_token(sub="bob/avatar"),
    "sub-with-a-nul": lambda k: k.provider_token(sub="bob\x00"),
    "sub-dot-dot": lambda k: k.provider_token(sub=".."),
    "two-segments": lambda k: ".".join(k.provider_token().split(".")[:2]),
    "header-not-json": lambda k: b64(b"{not json") + "." + k.provider_token().split(".", 1)[1],
    "not-base64": lambda k: "%%%.%%%.%%%",
    "garbage-64-kb": lambda k: "a" * 65536,
}


@dataclass
class World:
    client: httpx.AsyncClient
    settings: Settings
    storage: Storage
    keys: Keys
    documents: dict[str, dict]

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def snapshot(self) -> tuple[dict[str, bytes], list]:
        return await store_snapshot(self.storage), await table_snapshot(self.settings.database_url)

    async def user_snapshot(self, user_id: str) -> tuple[list, dict[str, bytes]]:
        """One user's row and the bytes of every file it points at."""
        rows = [row for row in await table_snapshot(self.settings.database_url)]
        mine = [row for row in rows if row[0] == user_id]
        assert len(mine) == 1, f"{user_id} has no avatar"
        document = (await self.client.get(f"/users/{user_id}/avatar")).json()
        files = {}
        for variant in document["variants"]:
            key = variant["url"].split("/media/", 1)[1]
            files[key] = await self.storage.get(key)
        return mine, files


def photo(color=(0, 90, 200)) -> bytes:
    return jpeg_with_metadata((160, 120), color=color)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory) -> AsyncIterator[World]:
    tmp_path = tmp_path_factory.mktemp("jwt")
    url = f"sqlite+aiosqlite:///{tmp_path / 'avatar.db'}"
    await asyncio.to_thread(upgrade, url)  # Alembic runs its own event loop
    provider = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = make_settings(
        tmp_path,
        database_url=url,
        jwt_public_key=provider.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    keys = Keys(
        provider=provider,
        attacker=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        attacker_ec=ec.generate_private_key(ec.SECP256R1()),
        settings=settings,
    )
    storage = build_storage(settings)
    try:
        async with serving(create_app(settings, storage=storage)) as client:
            documents = {}
            for user, token in (
                ("alice", keys.provider_token("alice")),  # from the identity provider
                ("bob", create_token(settings, "bob")),  # made by the service (HS256)
            ):
                response = await client.post(
                    "/users/me/avatar",
                    headers={"Authorization": f"Bearer {token}"},
                    files={"file": ("a.jpg", photo(), "image/jpeg")},
                )
                assert response.status_code == 201, response.text
                documents[user] = response.json()
            yield World(client, settings, storage, keys, documents)
    finally:
        close = getattr(storage, "close", None)
        if close is not None:
            close()


def assert_401(response: httpx.Response, attack: str) -> None:
    assert response.status_code == 401, f"{attack}: {response.status_code} {response.text}"
    assert_problem(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_attacks_start_from_tokens_that_work(world: World) -> None:
    """The same shapes, correctly made, are accepted: the attacks fail for the reason tested."""
    assert world.documents["alice"]["user_id"] == "alice"
    assert world.documents["bob"]["user_id"] == "bob"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_correctly_made_provider_token_for_bob_is_accepted(world: World) -> None:
    response = await world.client.get(
        "/users/me/avatar", headers=world.bearer(world.keys.provider_token("bob"))
    )
    assert response.status_code == 200, response.text


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_token_attack_is_401_on_every_route_and_changes_nothing(
    world: World, attack: str
) -> None:
    token = ATTACKS[attack](world.keys)
    headers = world.bearer(token)
    before = await world.snapshot()
    client = world.client

    assert_401(
        await client.post(
            "/users/me/avatar", headers=headers, files={"file": ("a.jpg", photo(), "image/jpeg")}
        ),
        attack,
    )
    assert_401(
        await client.post(
            "/users/me/avatar",
            headers=headers,
            json={"image_base64": base64.b64encode(photo()).decode()},
        ),
        attack,
    )
    assert_401(await client.patch("/users/me/avatar", headers=headers, json={"crop": None}), attack)
    assert_401(await client.delete("/users/me/avatar", headers=headers), attack)
    assert_401(await client.get("/users/me/avatar", headers=headers), attack)

    assert await world.snapshot() == before, f"{attack} changed something"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic Ym9iOmJvYg=="},
        {"Authorization": "Token {bob}"},
        {"Cookie": "token={bob}; access_token={bob}"},
        {"X-Access-Token": "{bob}"},
    ],
    ids=["none", "empty-bearer", "blank-bearer", "basic", "other-scheme", "cookie", "header"],
)
async def test_a_token_anywhere_but_the_bearer_header_is_ignored(world: World, headers) -> None:
    good = world.keys.provider_token("bob")
    headers = {name: value.replace("{bob}", good) for name, value in headers.items()}
    before = await world.snapshot()
    for method in ("DELETE", "GET"):
        response = await world.client.request(
            method, f"/users/me/avatar?access_token={good}", headers=headers
        )
        assert_401(response, str(headers))
    assert await world.snapshot() == before


@pytest.mark.asyncio(loop_scope="module")
async def test_alices_token_cannot_change_bobs_avatar_through_any_route(world: World) -> None:
    client = world.client
    alice = world.bearer(world.keys.provider_token("alice"))
    bob_before = await world.user_snapshot("bob")
    image = {"file": ("a.jpg", photo((250, 0, 0)), "image/jpeg")}

    # Bob's public URLs only read.
    for path in ("/users/bob/avatar", "/avatars/bob"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = await client.request(method, path, headers=alice, files=image)
            assert response.status_code == 405, (method, path, response.text)
            assert response.json()["code"] == "method_not_allowed"

    # Paths that try to climb from /users/me to Bob: no route matches them, or they resolve to
    # /users/me, which is Alice's.
    for raw_path in (
        "/users/me/../bob/avatar",
        "/users/bob/../me/avatar",
        "/users/me%2F..%2Fbob/avatar",
        "/users/bob%2Favatar",
        "/users//bob/avatar",
    ):
        for method in ("POST", "DELETE", "PATCH"):
            request = client.build_request(method, "/", headers=alice, files=image)
            request.url = request.url.copy_with(raw_path=raw_path.encode())
            response = await client.send(request)
            if response.status_code in (200, 201):
                assert response.json()["user_id"] == "alice", (method, raw_path)
            else:  # 204: Alice's own was deleted; 4xx: no such route, or not a valid body
                assert response.status_code == 204 or 400 <= response.status_code < 500, (
                    method,
                    raw_path,
                    response.text,
                )

    # Bob's id smuggled next to Alice's token: the token alone says whose avatar it is.
    smuggled = await client.post(
        "/users/me/avatar?user_id=bob&sub=bob",
        headers={**alice, "X-User-Id": "bob", "X-Forwarded-User": "bob"},
        data={"user_id": "bob", "sub": "bob"},
        files=image,
    )
    assert smuggled.status_code == 201, smuggled.text
    assert smuggled.json()["user_id"] == "alice"
    as_json = await client.post(
        "/users/me/avatar",
        headers=alice,
        json={"image_base64": base64.b64encode(photo((0, 250, 0))).decode(), "user_id": "bob"},
    )
    assert as_json.status_code == 201, as_json.text
    assert as_json.json()["user_id"] == "alice"
    recropped = await client.patch(
        "/users/me/avatar?user_id=bob", headers=alice, json={"crop": None, "user_id": "bob"}
    )
    assert recropped.status_code == 200, recropped.text
    assert recropped.json()["user_id"] == "alice"

    assert await world.user_snapshot("bob") == bob_before, "Bob's avatar changed"

    # Alice deleting "her" avatar with Bob's id in every place deletes hers, never his.
    deleted = await client.delete(
        "/users/me/avatar?user_id=bob", headers={**alice, "X-User-Id": "bob"}
    )
    assert deleted.status_code == 204
    assert (await client.get("/users/alice/avatar")).status_code == 404
    assert await world.user_snapshot("bob") == bob_before, "Bob's avatar changed"
