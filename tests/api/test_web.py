from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.config import ConfigurationError
from app.main import create_app
from tests.conftest import ROOT, make_settings, running_app


@pytest.fixture
async def dev_client(tmp_path, sqlite_url) -> AsyncIterator[httpx.AsyncClient]:
    """A developer's server: development tokens on, the generated secret, no provider."""
    settings = make_settings(tmp_path, database_url=sqlite_url, jwt_secret="", dev_tokens=True)
    async with running_app(settings) as (client, _auth):
        yield client


async def test_page_and_assets_are_served_with_dev_tokens(dev_client) -> None:
    client = dev_client
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    for asset, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        response = await client.get(f"/try/{asset}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(kind)
    assert (await client.get("/try/../../main.py")).status_code == 404
    assert (await client.get("/try/index.html")).status_code == 404


def test_page_makes_no_outside_requests() -> None:
    static = ROOT / "app" / "web" / "static"
    for path in static.iterdir():
        text = path.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path.name
        assert "@import" not in text and "cdn" not in text.lower(), path.name


async def test_dev_token_is_accepted_by_the_api(dev_client) -> None:
    client = dev_client
    response = await client.post("/dev/token", json={"user_id": "page-user"})
    assert response.status_code == 200
    token = response.json()["token"]
    me = await client.get("/users/me/avatar", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["code"] == "avatar_not_found"  # authenticated; no avatar yet
    bad = await client.post("/dev/token", json={"user_id": ""})
    assert bad.status_code == 422


async def test_page_and_dev_token_do_not_exist_in_production(tmp_path, sqlite_url) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, env="production", jwt_secret="p" * 48
    )
    async with running_app(settings) as (client, _auth):
        for method, path in (("GET", "/"), ("GET", "/try/app.js"), ("POST", "/dev/token")):
            response = await client.request(method, path, json={"user_id": "x"})
            assert response.status_code in (404, 405), (path, response.status_code)
        schema = (await client.get("/openapi.json")).json()
        assert "/dev/token" not in schema["paths"]


async def test_page_and_dev_token_do_not_exist_unless_enabled(tmp_path, sqlite_url) -> None:
    """Development is the default environment; the token endpoint still needs asking for."""
    for secret in ("", "d" * 48):
        settings = make_settings(tmp_path, database_url=sqlite_url, jwt_secret=secret)
        assert settings.env == "development" and not settings.dev_tokens
        async with running_app(settings) as (client, _auth):
            response = await client.post("/dev/token", json={"user_id": "x"})
            assert response.status_code in (404, 405)
            assert (await client.get("/")).status_code == 404
            assert "/dev/token" not in (await client.get("/openapi.json")).json()["paths"]


@pytest.mark.parametrize(
    "values",
    [
        {"env": "production", "jwt_secret": "p" * 48},
        {"jwt_secret": "configured-" + "s" * 40},
        {"jwt_secret": "", "jwks_url": "https://id.example.test/jwks.json"},
        {"jwt_secret": "", "jwt_public_key": "-----BEGIN PUBLIC KEY-----"},
        {"jwt_secret": "", "jwt_algorithms": ["RS256"]},
    ],
)
def test_dev_tokens_are_refused_beside_real_keys_or_in_production(tmp_path, values) -> None:
    with pytest.raises(ConfigurationError, match="AVATAR_DEV_TOKENS"):
        make_settings(tmp_path, dev_tokens=True, **values)


async def dev_token_from(settings, client_host: str) -> httpx.Response:
    """``POST /dev/token`` as a client at ``client_host`` (what the server sees as the peer)."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, client=(client_host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await http.post("/dev/token", json={"user_id": "mallory"})


@pytest.mark.parametrize(
    "client_host", ["203.0.113.7", "10.0.0.2", "::ffff:192.0.2.1", "2001:db8::1", "0.0.0.0"]
)
async def test_dev_token_is_refused_to_clients_off_this_machine(
    tmp_path, sqlite_url, client_host
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, jwt_secret="", dev_tokens=True)
    response = await dev_token_from(settings, client_host)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"
    assert "token" not in response.json()


@pytest.mark.parametrize("client_host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_dev_token_is_given_to_loopback_clients(tmp_path, sqlite_url, client_host) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, jwt_secret="", dev_tokens=True)
    response = await dev_token_from(settings, client_host)
    assert response.status_code == 200, response.text
