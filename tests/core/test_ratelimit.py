from __future__ import annotations

import os
import socket
import uuid

import pytest

from app.core.errors import RateLimited
from app.core.ratelimit import UploadRateLimiter, limits_storage_uri
from tests.bodies import CountingBody
from tests.conftest import make_settings, missing, running_app
from tests.images import jpeg_with_metadata

REDIS_URL = os.environ.get("AVATAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    host_port = REDIS_URL.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        missing(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


def test_storage_uri() -> None:
    assert limits_storage_uri("") == "async+memory://"
    assert limits_storage_uri("redis://h:6379/1") == "async+redis://h:6379/1"
    with pytest.raises(ValueError):
        limits_storage_uri("http://h")


async def test_memory_limit_counts_per_user() -> None:
    limiter = UploadRateLimiter("3/minute")
    for _ in range(3):
        await limiter.hit("alice")
    with pytest.raises(RateLimited) as caught:
        await limiter.hit("alice")
    assert 1 <= int(caught.value.headers["Retry-After"]) <= 60
    await limiter.hit("bob")  # other users have their own count


async def test_redis_limit_is_shared_between_replicas(redis_url) -> None:
    user = f"user-{uuid.uuid4().hex}"
    replica_a = UploadRateLimiter("2/minute", redis_url)
    replica_b = UploadRateLimiter("2/minute", redis_url)
    assert await replica_a.check()
    await replica_a.hit(user)
    await replica_b.hit(user)
    with pytest.raises(RateLimited):
        await replica_a.hit(user)
    with pytest.raises(RateLimited):
        await replica_b.hit(user)
    await replica_a.close()
    await replica_b.close()


async def test_unreachable_redis_lets_uploads_through() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    limiter = UploadRateLimiter("1/minute", f"redis://127.0.0.1:{port}/0")
    await limiter.hit("alice")
    await limiter.hit("alice")
    await limiter.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_upload_over_the_limit_is_429_before_the_body(
    tmp_path, sqlite_url, request, backend: str
) -> None:
    redis = request.getfixturevalue("redis_url") if backend == "redis" else ""
    settings = make_settings(
        tmp_path, database_url=sqlite_url, rate_limit="2/minute", redis_url=redis
    )
    user = f"limited-{uuid.uuid4().hex}"
    async with running_app(settings) as (client, auth):
        files = {"file": ("a.jpg", jpeg_with_metadata((64, 64)), "image/jpeg")}
        for _ in range(2):
            response = await client.post("/users/me/avatar", headers=auth(user), files=files)
            assert response.status_code == 201
        body = CountingBody(32)

        response = await client.post(
            "/users/me/avatar",
            headers={**auth(user), "Content-Type": "multipart/form-data; boundary=x"},
            content=body,
        )
        assert response.status_code == 429
        assert response.json()["code"] == "rate_limited"
        assert int(response.headers["retry-after"]) >= 1
        assert body.consumed <= 65536
        # Reads are not limited.
        assert (await client.get("/users/me/avatar", headers=auth(user))).status_code == 200
