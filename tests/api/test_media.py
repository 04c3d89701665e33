from __future__ import annotations

import json
import logging

import pytest

from app.core.logging import JsonFormatter
from tests.client import metric_value, upload
from tests.images import jpeg_with_metadata


@pytest.fixture
async def uploaded(client, auth) -> dict:
    response = await upload(client, auth, jpeg_with_metadata())
    assert response.status_code == 201
    return response.json()


def media_path(url: str) -> str:
    return url.removeprefix("http://testserver")


async def test_media_headers(client, uploaded) -> None:
    response = await client.get(media_path(uploaded["avatar_url"]))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/webp"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp
    assert response.headers["etag"].startswith('"')


async def test_if_none_match_gives_304(client, uploaded) -> None:
    path = media_path(uploaded["avatar_thumb_url"])
    etag = (await client.get(path)).headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await client.get(path, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
    assert (await client.get(path, headers={"If-None-Match": '"stale"'})).status_code == 200


async def test_head_gives_headers_without_body(client, uploaded) -> None:
    response = await client.head(media_path(uploaded["avatar_url"]))
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == uploaded["bytes"]


@pytest.mark.parametrize(
    "path",
    [
        "/media/../avatar.db",
        "/media/%2e%2e/avatar.db",
        "/media/%2e%2e%2favatar.db",
        "/media/avatars/%2e%2e/%2e%2e/avatar.db",
        "/media/%252e%252e/avatar.db",
        "/media/..%5cavatar.db",
        "/media//etc/passwd",
        "/media/%2fetc%2fpasswd",
        "/media/avatars/..%2f..%2fjwt-secret",
        "/media/.tmp-123",
        "/media/avatars",
        "/media/",
        "/media/%00",
    ],
)
async def test_no_path_outside_the_media_root_is_reachable(
    client, uploaded, settings, path
) -> None:
    (settings.data_dir / "jwt-secret").write_text("do-not-serve")
    response = await client.get(path)
    assert response.status_code == 404, path
    assert response.headers["content-type"].startswith("application/problem+json")
    assert b"do-not-serve" not in response.content
    assert b"SQLite" not in response.content


async def test_missing_media_is_404(client) -> None:
    response = await client.get("/media/avatars/0123456789abcdef/original.webp")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_media_reads_are_counted_logged_and_documented(client, uploaded, caplog) -> None:
    """/media is answered by a route of its own, ahead of FastAPI's: the same request id, log
    line, metrics and OpenAPI entry as every route."""
    path = media_path(uploaded["avatar_url"])
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = await client.get(path, headers={"X-Request-ID": "media-1"})
        missing = await client.get("/media/avatars/0123456789abcdef/original.webp")
    assert response.headers["x-request-id"] == "media-1"
    access = [record for record in caplog.records if record.name == "app.access"]
    lines = [json.loads(JsonFormatter().format(record)) for record in access]
    assert [(line["route"], line["status"], line["error_code"]) for line in lines] == [
        ("/media/{key:path}", 200, None),
        ("/media/{key:path}", 404, "not_found"),
    ]
    assert missing.headers["x-request-id"]
    text = (await client.get("/metrics")).text
    for status in ("200", "404"):
        assert (
            metric_value(
                text, "avatar_http_requests_total", route="/media/{key:path}", status=status
            )
            == 1
        )
    operation = (await client.get("/openapi.json")).json()["paths"]["/media/{key}"]["get"]
    assert operation["operationId"] == "read_media"
    assert {"200", "304", "404"} <= set(operation["responses"])
