from __future__ import annotations

import json
import logging

import pytest

from app.core.logging import JsonFormatter
from tests.client import metric_value, upload
from tests.images import jpeg_with_metadata


async def test_metrics_count_requests_uploads_and_storage(client, auth) -> None:
    await upload(client, auth, jpeg_with_metadata())
    await upload(client, auth, b"not an image")
    await client.get("/healthz")
    text = (await client.get("/metrics")).text

    assert metric_value(text, "avatar_uploads_total", outcome="created") == 1
    assert metric_value(text, "avatar_uploads_total", outcome="unsupported_format") == 1
    route = "/users/me/avatar"
    assert metric_value(text, "avatar_http_requests_total", route=route, status="201") == 1
    assert metric_value(text, "avatar_http_requests_total", route="/healthz", status="200") == 1
    assert metric_value(text, "avatar_http_request_bytes_total", route=route) > 1000
    assert metric_value(text, "avatar_http_response_bytes_total", route=route) > 100
    assert metric_value(text, "avatar_image_processing_seconds_count") == 2
    assert metric_value(text, "avatar_storage_operation_seconds_count", operation="put") >= 2
    assert metric_value(text, "avatar_uploads_in_flight") == 0
    assert "avatar_storage_errors_total" in text
    assert "avatar_http_request_duration_seconds_bucket" in text


async def test_unmatched_routes_do_not_create_label_values(client) -> None:
    for path in ("/a", "/b", "/c/d"):
        await client.get(path)
    text = (await client.get("/metrics")).text
    assert metric_value(text, "avatar_http_requests_total", route="unmatched", status="404") == 3
    assert '/c/d"' not in text


async def test_request_id_is_returned_and_accepted(client) -> None:
    generated = (await client.get("/healthz")).headers["x-request-id"]
    assert len(generated) == 32
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    hostile = await client.get("/healthz", headers={"X-Request-ID": "bad id; drop"})
    assert hostile.headers["x-request-id"] != "bad id; drop"


async def test_one_json_log_line_per_request_without_secrets(client, auth, caplog) -> None:
    headers = {**auth("carol"), "X-Request-ID": "req-42"}
    data = jpeg_with_metadata()
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = await client.post(
            "/users/me/avatar", headers=headers, files={"file": ("a.jpg", data, "image/jpeg")}
        )
    assert response.status_code == 201
    records = [r for r in caplog.records if r.name == "app.access"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    fields = json.loads(line)
    assert fields["request_id"] == "req-42"
    assert fields["user_id"] == "carol"
    assert fields["route"] == "/users/me/avatar"
    assert fields["status"] == 201
    assert fields["duration_ms"] > 0
    token = headers["Authorization"].split()[1]
    assert token not in line
    assert "SecretCameraMaker" not in line and "secret" not in line.lower()


@pytest.mark.parametrize("status_path", [("/nope", 404)])
async def test_error_code_is_logged(client, caplog, status_path) -> None:
    path, status = status_path
    with caplog.at_level(logging.INFO, logger="app.access"):
        await client.get(path)
    access = [r for r in caplog.records if r.name == "app.access"]
    fields = json.loads(JsonFormatter().format(access[-1]))
    assert fields["status"] == status
    assert fields["error_code"] == "not_found"
