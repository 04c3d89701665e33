"""An upload that meets a storage or database fault changes nothing and leaks nothing.

Each test first stores an avatar normally, takes a byte-for-byte snapshot of the store and of the
avatars table, injects one fault into the next upload, and checks the answer (503 problem+json
with a stable code) and that both snapshots are unchanged. They run on the suite's store (local,
or S3 with AVATAR_TEST_STORAGE=s3) and on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from app.core.config import Settings, load_settings
from app.core.security import create_token
from app.main import create_app
from app.storage import build_storage
from app.storage.s3 import S3Storage
from tests.client import assert_problem, upload
from tests.conftest import serving
from tests.s3 import closed_port, silent_endpoint
from tests.services.support import FaultyStorage, faulty_app, store_snapshot, table_snapshot


async def test_thumbnail_failure_removes_the_written_original(settings: Settings) -> None:
    async with faulty_app(settings) as (client, storage):
        assert (await upload(client)).status_code == 201
        store_before = await store_snapshot(storage)
        table_before = await table_snapshot(settings.database_url)
        written_before = len(storage.written)

        storage.fail_put = lambda key: key.endswith("/thumb.webp")
        assert_problem(await upload(client, color=(0, 0, 255)), 503, "storage_unavailable")

        new_original = storage.written[written_before:]
        assert [k.rsplit("/", 1)[1] for k in new_original] == ["original.webp"], (
            "the fault must hit after the original was written"
        )
        assert new_original[0] in storage.deleted
        assert await store_snapshot(storage) == store_before
        assert await table_snapshot(settings.database_url) == table_before


async def test_lost_answer_to_a_put_leaves_no_object(settings: Settings) -> None:
    """The store wrote the object but its answer never came back: it is deleted all the same."""
    async with faulty_app(settings) as (client, storage):
        assert (await upload(client)).status_code == 201
        store_before = await store_snapshot(storage)
        table_before = await table_snapshot(settings.database_url)

        storage.lose_put_response = lambda key: key.endswith("/original.webp")
        assert_problem(await upload(client, color=(0, 0, 255)), 503, "storage_unavailable")

        assert await store_snapshot(storage) == store_before
        assert await table_snapshot(settings.database_url) == table_before


async def test_failed_first_upload_leaves_no_row_and_no_object(settings: Settings) -> None:
    async with faulty_app(settings) as (client, storage):
        storage.fail_put = lambda key: key.endswith("/thumb.webp")
        assert_problem(await upload(client), 503, "storage_unavailable")
        assert storage.written, "the original must have been written before the fault"
        assert await store_snapshot(storage) == {}
        assert await table_snapshot(settings.database_url) == []
        assert (await client.get("/users/me/avatar")).status_code == 404


def fail_commits(engine) -> None:
    def refuse(_connection) -> None:
        raise OperationalError("COMMIT", {}, ConnectionResetError("injected: lost at commit"))

    event.listen(engine.sync_engine, "commit", refuse)


async def test_commit_failure_removes_new_objects_and_keeps_the_old_avatar(
    settings: Settings,
) -> None:
    inner = build_storage(settings)
    storage = FaultyStorage(inner)
    app = create_app(settings, storage=storage)
    try:
        async with serving(app) as client:
            client.headers["Authorization"] = f"Bearer {create_token(settings, 'alice')}"
            first = await upload(client)
            assert first.status_code == 201
            store_before = await store_snapshot(storage)
            table_before = await table_snapshot(settings.database_url)
            written_before = len(storage.written)

            fail_commits(app.state.runtime.engine)
            assert_problem(await upload(client, color=(0, 0, 255)), 503, "database_unavailable")

            new_keys = storage.written[written_before:]
            assert len(new_keys) == len(first.json()["variants"]), "all were written first"
            assert sorted(storage.deleted) == sorted(new_keys)
            assert await store_snapshot(storage) == store_before
            assert await table_snapshot(settings.database_url) == table_before
            assert (await client.get("/users/me/avatar")).json() == first.json()
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


# S3 that stops answering: the app starts on the real (moto) store, then every request's storage
# is an S3 client pointed at a dead endpoint, with short timeouts and two attempts.
DEAD_TIMEOUT = 0.5
DEAD_ATTEMPTS = 2
# The upload makes two calls (the put, then the compensating delete); each is at most two
# attempts of connect + read timeout, plus up to 1 s waiting for "100 Continue" on a put and
# botocore's backoff (< 1 s): about 7 s here. boto3's defaults would take minutes.
BOUND_SECONDS = 15


@pytest.mark.parametrize("fault", ["refused", "silent"])
async def test_unreachable_s3_gives_503_in_bounded_time_and_changes_nothing(
    fault: str, moto_server, sqlite_url: str, tmp_path
) -> None:
    values = moto_server.settings(
        s3_prefix="faults",
        s3_connect_timeout=DEAD_TIMEOUT,
        s3_read_timeout=DEAD_TIMEOUT,
        s3_max_attempts=DEAD_ATTEMPTS,
    )
    settings = load_settings(
        _env_file=None, data_dir=tmp_path, database_url=sqlite_url, jwt_secret="s" * 40, **values
    )
    healthy = S3Storage.from_settings(settings)
    app = create_app(settings, storage=healthy)
    with silent_endpoint() as silent:
        endpoint = silent if fault == "silent" else f"http://127.0.0.1:{closed_port()}"
        dead = S3Storage.from_settings(settings.model_copy(update={"s3_endpoint_url": endpoint}))
        try:
            async with serving(app) as client:
                client.headers["Authorization"] = f"Bearer {create_token(settings, 'alice')}"
                assert (await upload(client)).status_code == 201
                store_before = await store_snapshot(healthy)
                table_before = await table_snapshot(settings.database_url)

                # Every route reaches the store through the one runtime: swap it there (the
                # /media route reads it from the app's state, without dependency injection).
                runtime = app.state.runtime
                app.state.runtime = dataclasses.replace(runtime, storage=dead)
                started = time.monotonic()
                response = await upload(client, color=(0, 0, 255))
                elapsed = time.monotonic() - started
                assert_problem(response, 503, "storage_unavailable")
                assert response.headers["retry-after"]
                assert elapsed < BOUND_SECONDS, f"the upload took {elapsed:.1f} s"

                # Fetching an image through the service fails the same way, never with a 500.
                key = next(iter(store_before))
                assert_problem(await client.get(f"/media/{key}"), 503, "storage_unavailable")

                app.state.runtime = runtime
                assert await store_snapshot(healthy) == store_before
                assert await table_snapshot(settings.database_url) == table_before
        finally:
            dead.close()
            healthy.close()
