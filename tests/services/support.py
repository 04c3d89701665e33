"""Helpers for the fault tests: a storage wrapper that fails on cue, and snapshots that compare
a store and the avatars table byte for byte."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import text

from app.core.config import Settings
from app.db.session import create_engine
from app.storage.base import Storage, StoredObject, StoreError
from tests.conftest import ROOT

if TYPE_CHECKING:
    from app.services.gc import GcReport

KeyTest = Callable[[str], bool]


class FaultyStorage:
    """A real adapter with faults switched on per call, and a record of what was asked.

    - ``fail_put``: refuse the put before anything is written (the store is down);
    - ``lose_put_response``: write the object, then fail as if the answer was lost on the way
      back (a read timeout after the store did its work);
    - ``pause_after_puts``: after this many puts, wait until ``resume`` is set (an upload held
      between writing its objects and committing its row);
    - ``on_get`` / ``on_delete``: awaited with the key before the call reaches the store.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.fail_put: KeyTest = lambda _key: False
        self.lose_put_response: KeyTest = lambda _key: False
        self.pause_after_puts: int | None = None
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()
        self.written: list[str] = []
        self.deleted: list[str] = []
        self.on_delete: Callable[[str], Any] | None = None
        # Work to do when a listing has been read to its end, or before an ``exists`` answers
        # (an upload that commits in between, as beside a running gc).
        self.after_list: Callable[[], Awaitable[Any]] | None = None
        self.before_exists: Callable[[str], Awaitable[Any]] | None = None
        self.on_get: Callable[[str], Any] | None = None

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        if self.fail_put(key):
            raise StoreError(f"injected: put {key} refused")
        await self.inner.put(key, data, content_type)
        self.written.append(key)
        if self.lose_put_response(key):
            raise StoreError(f"injected: answer to put {key} lost")
        if self.pause_after_puts is not None and len(self.written) >= self.pause_after_puts:
            self.paused.set()
            await self.resume.wait()

    async def get(self, key: str) -> bytes:
        if self.on_get is not None:
            await self.on_get(key)
        return await self.inner.get(key)

    async def delete(self, key: str) -> None:
        if self.on_delete is not None:
            await self.on_delete(key)
        await self.inner.delete(key)
        self.deleted.append(key)

    async def exists(self, key: str) -> bool:
        if self.before_exists is not None:
            await self.before_exists(key)
        return await self.inner.exists(key)

    async def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        async for obj in self.inner.list_objects(prefix):
            yield obj
        if self.after_list is not None:
            await self.after_list()

    def list_partial(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        return self.inner.list_partial(prefix)

    async def delete_partial(self, name: str) -> None:
        await self.inner.delete_partial(name)

    def object_url(self, key: str) -> str | None:
        return self.inner.object_url(key)

    async def check(self) -> None:
        await self.inner.check()


@asynccontextmanager
async def faulty_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FaultyStorage]]:
    """The app on the suite's real store, wrapped so faults can be switched on; the client
    carries alice's token."""
    from app.core.security import create_token
    from app.main import create_app
    from app.storage import build_storage
    from tests.conftest import serving

    inner = build_storage(settings)
    faulty = FaultyStorage(inner)
    try:
        async with serving(create_app(settings, storage=faulty)) as client:
            client.headers["Authorization"] = f"Bearer {create_token(settings, 'alice')}"
            yield client, faulty
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


async def store_snapshot(storage: Storage) -> dict[str, bytes]:
    """Every object of the store, through the adapter itself."""
    return {obj.key: await storage.get(obj.key) async for obj in storage.list_objects()}


async def table_snapshot(database_url: str) -> list[tuple[Any, ...]]:
    """Every row of the avatars table, every column, as the database returns them."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text("SELECT * FROM avatars ORDER BY user_id"))
            return [tuple(row) for row in result]
    finally:
        await engine.dispose()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as AVATAR_* variables, for a child process (a CLI run, a killed upload)."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[f"AVATAR_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, list | dict) else str(value)
        )
    return env


async def run_cli(settings: Settings, *args: str, cwd: Path) -> tuple[int, str, str]:
    """``avatar-service ARGS`` in a child process configured with ``settings``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        cwd=cwd,
        env=child_env(settings),
        stdout=PIPE,
        stderr=PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def gc_report(settings: Settings, *, grace: float = 3600) -> GcReport:
    """What a dry run of ``avatar-service gc --grace GRACE`` finds, from its service in this
    process: for tests about what gc finds rather than about the command."""
    from app.services.gc import reconcile
    from app.services.runtime import open_runtime

    async with open_runtime(settings, images=False) as runtime:
        return await reconcile(
            sessions=runtime.sessions,
            storage=runtime.storage,
            grace=timedelta(seconds=grace),
        )


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(ROOT)
    return env


SUMMARY_LINE = re.compile(
    r"^\s*(?P<label>[a-z][a-z ,()]*?)\s+(?P<count>[\d,]+)\s+(?P<bytes>[\d,]+)\s*$"
)


def gc_summary(output: str) -> dict[str, tuple[int, int]]:
    """The ``gc`` summary table as {label: (objects, bytes)}."""
    rows = {}
    for line in output.splitlines():
        match = SUMMARY_LINE.match(line)
        if match:
            rows[match["label"]] = (
                int(match["count"].replace(",", "")),
                int(match["bytes"].replace(",", "")),
            )
    return rows
