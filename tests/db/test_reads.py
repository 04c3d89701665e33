"""``AvatarReads``, the read path's one query: the row a session sees, on both databases; on
SQLite without waiting for a writer (and waiting its turn only when the file is locked
exclusively); on PostgreSQL through a restart of the server's side of its connections."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.variants import StoredVariant, VariantSet
from app.db.models import Avatar
from app.db.reads import READ_POOL_SIZE, AvatarReads
from app.db.session import create_engine, create_sessionmaker
from tests.conftest import _truncate

VARIANTS = VariantSet.of(
    StoredVariant("original", "avatars/0123abcd/original.webp", 600, 400, 9000, "image/webp"),
    StoredVariant("thumb", "avatars/0123abcd/thumb.webp", 400, 400, 3000, "image/webp"),
)


def columns(avatar: Avatar) -> dict[str, object]:
    values = {c.key: getattr(avatar, c.key) for c in inspect(Avatar).column_attrs}
    # SQLite hands back naive UTC; the presenter adds the zone.
    for name in ("created_at", "updated_at"):
        values[name] = values[name].replace(tzinfo=None)
    return values


async def stored_avatar(url: str) -> Avatar:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            now = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
            session.add(
                Avatar(
                    user_id="alice",
                    version="0123abcd",
                    width=600,
                    height=400,
                    source_format="JPEG",
                    variants=VARIANTS,
                    metadata_removed=["exif.gps"],
                    orientation_applied=6,
                    blurhash="LEHV6nWB2yk8pyo0adR*.7kCMdnj",
                    dominant_color="#aabbcc",
                    crop=[0, 0, 400, 400],
                    crop_source="client",
                    created_at=now,
                    updated_at=now,
                )
            )
        async with create_sessionmaker(engine)() as session:
            avatar = await session.get(Avatar, "alice")
        assert avatar is not None
        return avatar
    finally:
        await engine.dispose()


async def test_reads_give_the_row_a_session_sees(database_url: str) -> None:
    expected = await stored_avatar(database_url)
    engine = create_engine(database_url)
    reads = AvatarReads(engine)
    try:
        found = await reads.avatar("alice")
        assert found is not None
        assert columns(found) == columns(expected)
        assert found.variants == VARIANTS
        assert await reads.avatar("bob") is None
    finally:
        await reads.close()
        await engine.dispose()


async def test_sqlite_reads_wait_their_turn_only_for_an_exclusive_lock(sqlite_url: str) -> None:
    await stored_avatar(sqlite_url)
    path = sqlite_url.split("///", 1)[1]
    engine = create_engine(sqlite_url)
    reads = AvatarReads(engine)
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # A write transaction open (an upload's row switch): the read does not wait.
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE avatars SET version = 'changed0' WHERE user_id = 'alice'")
        async with asyncio.timeout(1):
            avatar = await reads.avatar("alice")
        assert avatar is not None and avatar.version == "0123abcd"  # the committed row
        writer.execute("ROLLBACK")
        await reads.close()
        await engine.dispose()

        # The file locked exclusively (no reader may enter; only while no other connection is
        # open): the read waits in a thread for the lock to go, instead of failing, and without
        # blocking the event loop meanwhile.
        writer.execute("PRAGMA locking_mode=EXCLUSIVE")
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("UPDATE avatars SET version = 'changed1' WHERE user_id = 'alice'")
        engine = create_engine(sqlite_url)
        reads = AvatarReads(engine)

        def commit_and_close() -> None:  # the lock lasts as long as the connection
            writer.execute("COMMIT")
            writer.close()

        release = threading.Timer(0.5, commit_and_close)
        release.start()
        ticks = 0

        async def ticking() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(ticking())
        try:
            async with asyncio.timeout(10):
                avatar = await reads.avatar("alice")
        finally:
            ticker.cancel()
            release.join()
        assert avatar is not None and avatar.version == "changed1"
        assert ticks >= 10  # the loop ran while the read waited
    finally:
        writer.close()
        await reads.close()
        await engine.dispose()


async def postgres_reads(postgres_url: str, **options: float) -> tuple[AsyncEngine, AvatarReads]:
    """An empty database but for alice's avatar, and the writers' engine and reads on it."""
    await _truncate(postgres_url)
    await stored_avatar(postgres_url)
    engine = create_engine(postgres_url)
    return engine, AvatarReads(engine, **options)


@pytest.mark.postgres
async def test_postgres_reads_survive_the_server_closing_their_connections(
    postgres_url: str,
) -> None:
    engine, reads = await postgres_reads(postgres_url)
    parsed = make_url(postgres_url)
    try:
        # Several pooled connections, all of which the server then closes (as a restart does).
        await asyncio.gather(*(reads.avatar("alice") for _ in range(4)))
        admin = await asyncpg.connect(
            user=parsed.username, host=parsed.host, port=parsed.port, database="postgres"
        )
        try:
            closed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                parsed.database,
            )
        finally:
            await admin.close()
        assert closed >= 1
        for _ in range(3):  # the first finds its connection dead, retries on a new one
            avatar = await reads.avatar("alice")
            assert avatar is not None and avatar.version == "0123abcd"
        async with engine.connect() as connection:  # the writers' pool pings, and recovers
            assert await connection.scalar(text("SELECT count(*) FROM avatars")) == 1
    finally:
        await reads.close()
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_reads_beyond_the_pool_wait_their_turn_in_arrival_order(
    postgres_url: str,
) -> None:
    engine, reads = await postgres_reads(postgres_url, timeout=0.3)
    try:
        # Every turn taken (as by READ_POOL_SIZE reads in progress): a newcomer fails as the
        # pool would after the database timeout (503), and takes no turn.
        for _ in range(READ_POOL_SIZE):
            await reads._turns.acquire()
        with pytest.raises(PoolTimeout):
            await reads.avatar("alice")

        # Reads that arrive while all are taken are served in their order of arrival, also
        # against one that arrives just as a turn comes back.
        finished: list[int] = []

        async def read(number: int) -> None:
            assert await reads.avatar("alice") is not None
            finished.append(number)

        waiting = [asyncio.create_task(read(number)) for number in range(3)]
        await asyncio.sleep(0.05)  # all three wait
        reads._turns.release()  # one turn back: the reads pass it on, one after the other
        late = asyncio.create_task(read(3))
        await asyncio.gather(*waiting, late)
        assert finished == [0, 1, 2, 3]
        for _ in range(READ_POOL_SIZE - 1):
            reads._turns.release()
    finally:
        await reads.close()
    # A burst of many more reads than connections: all answered, none beyond the pool. With the
    # default database timeout: 0.3 s above is for the refusal, and a busy machine can keep the
    # last of forty reads through ten connections waiting longer than that.
    burst = AvatarReads(engine)
    try:
        await asyncio.gather(*(burst.avatar("alice") for _ in range(4 * READ_POOL_SIZE)))
    finally:
        await burst.close()
        await engine.dispose()
