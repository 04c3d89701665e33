from __future__ import annotations

import re

from tests.conftest import ROOT, make_settings, running_app


async def test_page_and_assets_are_served_in_development(client) -> None:
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


async def test_dev_token_is_accepted_by_the_api(client) -> None:
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
