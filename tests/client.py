"""Calls to the service as its clients make them, and the check on its error answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.images import jpeg_with_metadata

PROBLEM = "application/problem+json"
AVATAR = "/users/me/avatar"

AuthHeaders = Callable[..., dict[str, str]]


def files(data: bytes, name: str = "photo.jpg", content_type: str = "image/jpeg") -> dict:
    """The multipart ``file`` field of an upload."""
    return {"file": (name, data, content_type)}


async def upload(
    client: httpx.AsyncClient,
    auth: AuthHeaders | None = None,
    image: bytes | None = None,
    *,
    user: str = "alice",
    color: tuple[int, int, int] = (200, 60, 30),
    **request: Any,
) -> httpx.Response:
    """``POST /users/me/avatar`` with ``image`` as the file (a 320x240 JPEG of ``color`` when
    none is given). With ``auth`` (the suite's header maker) it is sent as ``user``; without,
    with the client's own headers. ``request`` goes to the request: ``params``, ``data``..."""
    if image is None:
        image = jpeg_with_metadata((320, 240), color=color)
    headers = auth(user) if auth is not None else None
    return await client.post(AVATAR, headers=headers, files=files(image), **request)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    """An RFC 9457 problem+json answer with this status and stable code, complete and without a
    stack trace; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        if metric.split("{")[0] != name:
            continue
        if all(f'{key}="{val}"' in metric for key, val in labels.items()):
            return float(value)
    return 0.0
