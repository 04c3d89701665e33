"""On SQLite a read never queues for the write lock: the document, the image and /readyz answer
while another connection holds a write transaction open (as an upload's row switch does)."""

from __future__ import annotations

import asyncio
import sqlite3

from tests.client import upload
from tests.conftest import make_settings, running_app


async def test_reads_answer_while_a_writer_holds_the_sqlite_lock(tmp_path, sqlite_url) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url)
    async with running_app(settings) as (client, auth):
        assert (await upload(client, auth)).status_code == 201
        path = sqlite_url.split("///", 1)[1]
        writer = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        # Off the event loop: a write the app is finishing (its event dispatcher's) needs the
        # loop to commit before this lock can be had.
        await asyncio.to_thread(writer.execute, "BEGIN IMMEDIATE")
        try:
            # Before, each read began with BEGIN IMMEDIATE and waited up to the busy timeout.
            async with asyncio.timeout(5):
                document = await client.get("/users/alice/avatar")
                image = await client.get("/avatars/alice", params={"size": 64})
                ready = await client.get("/readyz")
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert document.status_code == 200, document.text
    assert image.status_code in (200, 302, 307), image.text
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"] == "ok"
