"""What the S3 adapter adds to the contract, against moto's server over real HTTP: object headers,
the prefix, URLs (presigned ones fetched over HTTP), paging, timeouts, error messages, and the
service starting (or refusing to start) on it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.core.config import ConfigurationError, load_settings
from app.main import create_app
from app.storage import StoreError, build_storage
from app.storage.s3 import CACHE_CONTROL, S3Storage
from tests.conftest import ROOT, make_settings, serving
from tests.images import jpeg_with_metadata
from tests.s3 import closed_port, silent_endpoint
from tests.storage.conftest import s3_storage

KEY = "avatars/0123456789abcdef/original.webp"


@pytest.fixture
def s3(moto_server, tmp_path: Path):
    storage = s3_storage(moto_server, tmp_path, s3_prefix="tenant/avatars-prod")
    yield storage
    storage.close()


async def test_objects_carry_type_caching_and_disposition(s3: S3Storage, moto_server) -> None:
    await s3.put(KEY, b"RIFF....WEBP", "image/webp")
    head = moto_server.client.head_object(Bucket=s3.bucket, Key=s3.prefix + KEY)
    assert head["ContentType"] == "image/webp"
    assert head["CacheControl"] == CACHE_CONTROL == "public, max-age=31536000, immutable"
    assert head["ContentDisposition"] == "inline"


async def test_keys_live_under_the_prefix_and_nothing_else_is_seen(
    s3: S3Storage, moto_server
) -> None:
    assert s3.prefix == "tenant/avatars-prod/"
    moto_server.client.put_object(Bucket=s3.bucket, Key="avatars/not-ours.webp", Body=b"x")
    moto_server.client.put_object(Bucket=s3.bucket, Key="tenant/avatars-prod/.hidden", Body=b"x")
    await s3.put(KEY, b"data", "image/webp")
    raw = moto_server.client.list_objects_v2(Bucket=s3.bucket)["Contents"]
    assert "tenant/avatars-prod/" + KEY in {item["Key"] for item in raw}
    assert [obj.key async for obj in s3.list_objects()] == [KEY]
    assert not await s3.exists("not-ours.webp")


async def test_presigned_url_serves_the_bytes_over_http(moto_server, tmp_path) -> None:
    storage = s3_storage(moto_server, tmp_path, s3_prefix="p", s3_presign_ttl=120)
    try:
        data = jpeg_with_metadata((64, 48))
        await storage.put(KEY, data, "image/webp")
        url = storage.object_url(KEY)
        parts = urlsplit(url)
        assert url.startswith(moto_server.endpoint_url)
        assert parts.path.endswith("/p/" + KEY)
        query = parse_qs(parts.query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        assert query["X-Amz-Expires"] == ["120"]
        async with httpx.AsyncClient() as http:
            response = await http.get(url)
            assert response.status_code == 200
            assert response.content == data
            assert response.headers["content-type"] == "image/webp"
            assert response.headers["cache-control"] == CACHE_CONTROL
    finally:
        storage.close()


async def test_public_base_url_gives_base_plus_key(moto_server, tmp_path) -> None:
    storage = s3_storage(moto_server, tmp_path, s3_public_base_url="https://cdn.example.test/av/")
    try:
        assert storage.object_url(KEY) == f"https://cdn.example.test/av/{KEY}"
    finally:
        storage.close()


async def test_list_follows_every_page(moto_server, tmp_path) -> None:
    storage = s3_storage(moto_server, tmp_path, s3_prefix="paged")
    calls = 0
    list_page = storage._list_page

    def small_pages(prefix: str, token: str | None) -> dict:
        nonlocal calls
        calls += 1
        params = {"Bucket": storage.bucket, "Prefix": prefix, "MaxKeys": 2}
        if token:
            params["ContinuationToken"] = token
        return storage.client.list_objects_v2(**params)

    try:
        keys = [f"avatars/{i:02d}/original.webp" for i in range(7)]
        for key in keys:
            await storage.put(key, b"x", "image/webp")
        storage._list_page = small_pages  # type: ignore[method-assign]
        assert [obj.key async for obj in storage.list_objects()] == keys
        assert calls == 4
    finally:
        storage._list_page = list_page  # type: ignore[method-assign]
        storage.close()


async def test_missing_bucket_is_unavailable_not_missing_key(moto_server, tmp_path) -> None:
    storage = s3_storage(moto_server, tmp_path, s3_bucket="no-such-bucket")
    try:
        with pytest.raises(StoreError, match="NoSuchBucket"):
            await storage.get(KEY)
        with pytest.raises(StoreError):
            await storage.put(KEY, b"x", "image/webp")
        with pytest.raises(StoreError, match="S3 bucket 'no-such-bucket' does not exist"):
            await storage.check()
    finally:
        storage.close()


async def test_refused_credentials_are_explained(s3: S3Storage, moto_server) -> None:
    with moto_server.authentication_enforced():
        with pytest.raises(StoreError, match="was denied .*check the credentials"):
            await s3.check()
        with pytest.raises(StoreError):
            await s3.put(KEY, b"x", "image/webp")
    await s3.check()


async def test_missing_credentials_are_explained(moto_server, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = s3_storage(moto_server, tmp_path)
    try:
        with pytest.raises(StoreError, match="no credentials found"):
            await storage.check()
    finally:
        storage.close()


@pytest.mark.parametrize("fault", ["refused", "silent"])
async def test_every_call_to_a_dead_endpoint_fails_in_bounded_time(
    fault: str, moto_server, tmp_path
) -> None:
    with silent_endpoint() as silent:
        endpoint = silent if fault == "silent" else f"http://127.0.0.1:{closed_port()}"
        storage = s3_storage(
            moto_server,
            tmp_path,
            s3_bucket="any",
            s3_endpoint_url=endpoint,
            s3_connect_timeout=0.3,
            s3_read_timeout=0.3,
            s3_max_attempts=2,
        )
        calls = {
            "put": lambda: storage.put(KEY, b"x" * 1000, "image/webp"),
            "get": lambda: storage.get(KEY),
            "exists": lambda: storage.exists(KEY),
            "delete": lambda: storage.delete(KEY),
            "list": lambda: anext(aiter(storage.list_objects())),
            "check": storage.check,
        }

        async def timed(call: Callable[[], Awaitable[object]]) -> float:
            started = time.monotonic()
            with pytest.raises(StoreError):
                await call()
            return time.monotonic() - started

        try:  # side by side, as a replica's requests meet a dead store
            elapsed = await asyncio.gather(*(timed(call) for call in calls.values()))
            for name, seconds in zip(calls, elapsed, strict=True):
                # Two attempts of 0.3 s, botocore's backoff (< 1 s), and for a put up to 1 s
                # waiting for "100 Continue".
                assert seconds < 6, f"{name} took {seconds:.1f} s"
        finally:
            storage.close()


async def test_calls_run_off_the_event_loop(moto_server, tmp_path) -> None:
    """While a call waits on a silent endpoint, the event loop keeps running other work."""
    with silent_endpoint() as silent:
        storage = s3_storage(
            moto_server,
            tmp_path,
            s3_endpoint_url=silent,
            s3_read_timeout=1.0,
            s3_max_attempts=1,
        )
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            started = time.monotonic()
            with pytest.raises(StoreError):
                await storage.exists(KEY)
            waited = time.monotonic() - started
        finally:
            task.cancel()
            storage.close()
        assert waited >= 0.9
        assert ticks >= 30, f"the loop ticked {ticks} times in {waited:.1f} s"


def test_client_is_built_with_the_configured_limits(moto_server, tmp_path) -> None:
    settings = make_settings(
        tmp_path,
        **moto_server.settings(
            s3_connect_timeout=1.5,
            s3_read_timeout=7.0,
            s3_max_attempts=4,
            s3_max_connections=6,
            s3_addressing_style="path",
        ),
    )
    storage = build_storage(settings)
    try:
        assert isinstance(storage, S3Storage)
        config = storage.client.meta.config
        assert (config.connect_timeout, config.read_timeout) == (1.5, 7.0)
        assert config.retries == {"mode": "standard", "total_max_attempts": 4}
        assert config.max_pool_connections == 6
        assert config.s3 == {"addressing_style": "path"}
        assert storage.client.meta.endpoint_url == moto_server.endpoint_url
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"storage": "s3"}, "AVATAR_S3_BUCKET must be set"),
        ({"storage": "s3", "s3_bucket": "b", "s3_prefix": "../up"}, "AVATAR_S3_PREFIX"),
        ({"storage": "s3", "s3_bucket": "b", "s3_presign_ttl": 8 * 86400}, "s3_presign_ttl"),
        ({"storage": "s3", "s3_bucket": "b", "s3_max_attempts": 0}, "s3_max_attempts"),
    ],
)
def test_bad_s3_settings_are_refused_readably(values: dict, message: str, tmp_path) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(_env_file=None, data_dir=tmp_path, **values)


def test_prefix_is_normalised(tmp_path) -> None:
    settings = load_settings(
        _env_file=None, data_dir=tmp_path, storage="s3", s3_bucket="b", s3_prefix="/a/b/"
    )
    assert settings.s3_prefix == "a/b/"


# The service on S3: startup, readiness.


async def test_startup_on_a_missing_bucket_fails_with_a_clear_message(
    moto_server, tmp_path, sqlite_url
) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, **moto_server.settings(s3_bucket="no-such-bucket")
    )
    with pytest.raises(ConfigurationError) as caught:
        async with serving(create_app(settings)):
            pass
    assert (
        str(caught.value) == "the storage cannot be used: S3 bucket 'no-such-bucket' does not exist"
    )


async def test_readyz_on_s3_reports_a_bucket_that_went_away(moto_server, tmp_path, sqlite_url):
    settings = make_settings(tmp_path, database_url=sqlite_url, **moto_server.settings())
    async with serving(create_app(settings)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["storage"] == "ok"
        moto_server.client.delete_bucket(Bucket=settings.s3_bucket)
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"] == {
            "database": "ok",
            "storage": "unavailable (StoreError)",
        }


def serve(tmp_path: Path, **settings) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    env.update({f"AVATAR_{k.upper()}": str(v) for k, v in settings.items()})
    env["AVATAR_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONPATH"] = str(ROOT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.server
def test_serve_on_a_missing_bucket_prints_one_line_and_exits_2(moto_server, tmp_path) -> None:
    result = serve(tmp_path, **moto_server.settings(s3_bucket="no-such-bucket"))
    assert result.returncode == 2
    assert result.stderr == (
        "error: the storage cannot be used: S3 bucket 'no-such-bucket' does not exist\n"
    )
    assert result.stdout == ""


@pytest.mark.server
def test_serve_with_refused_credentials_prints_one_line_and_exits_2(moto_server, tmp_path):
    values = moto_server.settings()  # the bucket exists
    with moto_server.authentication_enforced():
        result = serve(tmp_path, **values)
    assert result.returncode == 2
    assert result.stderr.startswith("error: the storage cannot be used: access to S3 bucket")
    assert "check the credentials" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
