"""PostgreSQL goes away and comes back: 503 ``database_unavailable`` meanwhile, never a 500,
nothing changed, and recovery by itself, without a restart.

The app talks to the real PostgreSQL server through a TCP proxy on loopback that the test
cuts and restores (the machine's server itself is never stopped). Cutting closes every
connection the app holds (as a server restart or a failover does) and refuses new ones;
restoring forwards again, and ``pool_pre_ping`` replaces the dead pooled connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.core.security import create_token
from app.main import create_app
from app.storage import build_storage
from cluster.tcpproxy import CuttableProxy
from tests.client import assert_problem, upload
from tests.conftest import _truncate, make_settings, serving
from tests.services.support import FaultyStorage, store_snapshot, table_snapshot

pytestmark = pytest.mark.postgres


@contextlib.asynccontextmanager
async def proxied(postgres_url: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    url = make_url(postgres_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        await proxy.close()


def assert_database_unavailable(response: httpx.Response) -> None:
    assert_problem(response, 503, "database_unavailable")
    assert int(response.headers["retry-after"]) > 0


async def test_database_down_gives_503_and_recovers_by_itself(tmp_path, postgres_url) -> None:
    await _truncate(postgres_url)
    async with proxied(postgres_url) as (proxy, via_proxy):
        settings: Settings = make_settings(tmp_path, database_url=via_proxy)
        inner = build_storage(settings)
        storage = FaultyStorage(inner)  # records the puts and deletes; no faults
        app = create_app(settings, storage=storage)
        try:
            async with serving(app) as client:
                client.headers["Authorization"] = f"Bearer {create_token(settings, 'alice')}"
                first = await upload(client)
                assert first.status_code == 201, first.text
                store_before = await store_snapshot(storage)
                table_before = await table_snapshot(postgres_url)  # straight, not via the proxy
                written_before = len(storage.written)

                await proxy.cut()

                assert_database_unavailable(await upload(client, color=(0, 0, 255)))
                new_keys = storage.written[written_before:]
                assert new_keys, "the upload must have reached the database step"
                assert sorted(storage.deleted) == sorted(new_keys), "new objects must go again"
                assert_database_unavailable(await client.get("/users/me/avatar"))
                assert_database_unavailable(await client.get("/users/alice/avatar"))
                assert_database_unavailable(await client.delete("/users/me/avatar"))
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"].startswith("unavailable")
                assert (await client.get("/healthz")).status_code == 200  # alive, not ready
                assert await store_snapshot(storage) == store_before
                assert await table_snapshot(postgres_url) == table_before

                await proxy.restore()

                # The very first request after the database is back succeeds: no restart, and
                # no request spent on discovering the dead pooled connections.
                mine = await client.get("/users/me/avatar")
                assert mine.status_code == 200, mine.text
                assert mine.json()["version"] == first.json()["version"]
                assert (await client.get("/readyz")).status_code == 200
                second = await upload(client, color=(0, 0, 255))
                assert second.status_code == 201, second.text
                assert (await client.delete("/users/me/avatar")).status_code == 204
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()


async def test_a_database_that_never_answers_is_503_in_bounded_time(tmp_path) -> None:
    """A server that accepts connections and then says nothing (a hung primary, a black-holed
    network) must not hold requests: AVATAR_DATABASE_TIMEOUT bounds the wait."""
    import time

    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the connection open; never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings(
        tmp_path,
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test",
        database_timeout=1.0,
    )
    try:
        async with serving(create_app(settings)) as client:
            for path in ("/users/alice/avatar", "/readyz"):
                started = time.monotonic()
                response = await client.get(path)
                assert time.monotonic() - started < 10
                assert response.status_code == 503, response.text
            problem = (await client.get("/users/alice/avatar")).json()
            assert problem["code"] == "database_unavailable"
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()
        await server.wait_closed()
