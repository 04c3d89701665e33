"""The reconciler: orphans are reported, deleted only with ``apply`` and only past the grace
period; referenced objects and foreign keys are never touched; missing objects are reported.
Each test runs on local storage and on S3."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.core.security import create_token
from app.core.variants import KEY_PREFIX, object_key
from app.db.session import create_engine, create_sessionmaker
from app.main import create_app
from app.services.gc import MissingObject, current_keys, reconcile
from app.storage import Storage, build_storage
from tests.client import upload
from tests.conftest import serving
from tests.services.support import FaultyStorage, gc_summary, run_cli, store_snapshot

ORPHANS = {
    "avatars/0000aaaa0000aaaa0000aaaa0000aaaa/original.webp": b"o" * 3000,
    "avatars/0000aaaa0000aaaa0000aaaa0000aaaa/thumb.webp": b"t" * 700,
    "avatars/1111bbbb1111bbbb1111bbbb1111bbbb/original.webp": b"x" * 1234,
}
FOREIGN = {"backups/avatars.sql": b"not ours", "other/avatars/x.webp": b"not ours either"}
LATER = timedelta(hours=2)  # past the default grace period of one hour


class World:
    """An app with two avatars (alice, bob) and the means to look at it."""

    def __init__(self, settings: Settings, storage: FaultyStorage, client: httpx.AsyncClient):
        self.settings = settings
        self.storage = storage
        self.client = client
        self.engine = create_engine(settings.database_url)
        self.sessions = create_sessionmaker(self.engine)

    def headers(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {create_token(self.settings, user)}"}

    async def upload(self, user: str = "alice") -> httpx.Response:
        return await upload(self.client, self.headers, user=user)

    async def fetch(self, url: str) -> httpx.Response:
        """An image URL: through the app for /media URLs, over real HTTP for presigned ones."""
        if url.startswith(str(self.client.base_url)):
            return await self.client.get(url)
        async with httpx.AsyncClient() as http:
            return await http.get(url)

    async def plant(self, objects: dict[str, bytes]) -> None:
        for key, data in objects.items():
            await self.storage.put(key, data, "image/webp")

    async def reconcile(self, **kwargs):
        return await reconcile(sessions=self.sessions, storage=self.storage, **kwargs)


@pytest.fixture
async def world(store_settings: Settings) -> AsyncIterator[World]:
    inner = build_storage(store_settings)
    storage = FaultyStorage(inner)
    try:
        async with serving(create_app(store_settings, storage=storage)) as client:
            world = World(store_settings, storage, client)
            try:
                for user in ("alice", "bob"):
                    assert (await world.upload(user)).status_code == 201
                yield world
            finally:
                await world.engine.dispose()
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


def later() -> datetime:
    return datetime.now(UTC) + LATER


async def referenced(storage: Storage) -> dict[str, bytes]:
    return {k: v for k, v in (await store_snapshot(storage)).items() if k not in ORPHANS}


def test_key_prefix_covers_every_key_the_service_makes() -> None:
    assert object_key("0123abcd", "original").startswith(KEY_PREFIX)


async def test_dry_run_reports_orphans_with_bytes_and_deletes_nothing(world: World) -> None:
    await world.plant(ORPHANS | FOREIGN)
    before = await store_snapshot(world.storage)
    report = await world.reconcile(now=later())
    assert sorted(obj.key for obj in report.orphans) == sorted(ORPHANS)
    assert report.orphan_bytes == sum(map(len, ORPHANS.values()))
    assert report.referenced.count == len(before) - len(ORPHANS) - len(FOREIGN)
    assert report.scanned.count == len(before) - len(FOREIGN)
    assert report.deleted.count == 0 and report.clean
    assert await store_snapshot(world.storage) == before


async def test_apply_deletes_the_orphans_and_nothing_else(world: World) -> None:
    kept = await store_snapshot(world.storage)
    await world.plant(ORPHANS | FOREIGN)
    report = await world.reconcile(now=later(), apply=True)
    assert sorted(world.storage.deleted) == sorted(ORPHANS)
    assert (report.deleted.count, report.deleted.bytes) == (
        len(ORPHANS),
        sum(map(len, ORPHANS.values())),
    )
    assert await store_snapshot(world.storage) == kept | FOREIGN
    for user in ("alice", "bob"):
        document = (await world.client.get(f"/users/{user}/avatar")).json()
        for variant in document["variants"]:
            assert (await world.fetch(variant["url"])).status_code == 200
    again = await world.reconcile(now=later(), apply=True)
    assert again.orphans == [] and again.deleted.count == 0


async def test_orphans_within_the_grace_period_are_kept(world: World) -> None:
    await world.plant(ORPHANS)
    before = await store_snapshot(world.storage)
    report = await world.reconcile(apply=True)  # now, default grace of an hour
    assert report.orphans == []
    assert (report.recent.count, report.recent.bytes) == (
        len(ORPHANS),
        sum(map(len, ORPHANS.values())),
    )
    assert world.storage.deleted == []
    assert await store_snapshot(world.storage) == before


async def test_rows_whose_objects_are_missing_are_reported(world: World) -> None:
    document = (await world.client.get("/users/bob/avatar")).json()
    lost = object_key(document["version"], "thumb")
    await world.storage.inner.delete(lost)
    report = await world.reconcile(now=later(), apply=True)
    assert report.missing == [MissingObject("bob", lost)]
    assert not report.clean
    assert world.storage.deleted == [], "a referenced object must never be deleted"


async def test_an_upload_in_flight_survives_gc(world: World) -> None:
    document = (await world.client.get("/users/me/avatar", headers=world.headers())).json()
    world.storage.pause_after_puts = len(world.storage.written) + len(document["variants"])
    upload = asyncio.create_task(world.upload())
    await asyncio.wait_for(world.storage.paused.wait(), timeout=30)

    report = await world.reconcile(apply=True)  # objects written, row not yet committed
    assert report.recent.count == len(document["variants"])
    assert world.storage.deleted == []

    world.storage.resume.set()
    response = await upload
    assert response.status_code == 201
    for variant in response.json()["variants"]:
        assert (await world.fetch(variant["url"])).status_code == 200
    final = await world.reconcile(now=later())
    assert final.orphans == [] and final.clean


async def recorded(world: World, key: str, user: str = "alice") -> None:
    """Wait until the user's row lists ``key`` (a rendition is recorded behind its answer)."""
    for _ in range(200):
        if key in (await current_keys(world.sessions, {user})).get(user, set()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} was never recorded")


async def test_renditions_are_live_keys_and_a_dead_derivation_is_an_orphan(world: World) -> None:
    version = (await world.client.get("/users/alice/avatar")).json()["version"]
    served = await world.client.get("/avatars/alice", params={"size": 30, "format": "avif"})
    assert served.status_code in (200, 302)
    live = object_key(version, "avif-32", "image/avif")
    await recorded(world, live)
    # A derivation whose process died between its object and its row: an orphan, not live.
    dead = object_key(version, "png-16", "image/png")
    await world.storage.put(dead, b"p" * 321, "image/png")

    report = await world.reconcile(now=later(), apply=True)
    assert [obj.key for obj in report.orphans] == [dead]
    assert world.storage.deleted == [dead]
    assert await world.storage.exists(live) and report.clean
    again = await world.client.get("/avatars/alice", params={"size": 30, "format": "avif"})
    assert again.status_code == served.status_code  # the live rendition is served as it was

    assert (
        await world.client.delete("/users/me/avatar", headers=world.headers())
    ).status_code == 204
    assert not await world.storage.exists(live)  # the delete took the rendition with it
    after = await world.reconcile(now=later())
    assert after.orphans == [] and after.clean


def plant_partial_writes(world: World) -> dict[str, Path]:
    """Temp files as a process killed in the middle of ``LocalStorage.put`` leaves them: in a
    key's folder beside finished objects, and alone in a folder of their own."""
    root = world.settings.media_path
    document_folder = next(root.glob("avatars/*"))
    planted = {
        f"{document_folder.relative_to(root).as_posix()}/.tmp-{'a' * 32}": b"half" * 100,
        f"avatars/{'c' * 32}/.tmp-{'b' * 32}": b"half an original" * 50,
    }
    paths = {}
    for name, data in planted.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    return paths


async def test_partial_writes_are_found_and_removed_past_the_grace_period(world: World) -> None:
    if world.settings.storage != "local":
        pytest.skip("S3 writes are atomic: a killed put leaves nothing to find")
    before = await store_snapshot(world.storage)
    planted = plant_partial_writes(world)
    root = world.settings.media_path
    # Dot files that are not the service's temp files are never touched.
    strangers = [root / "avatars" / ".tmp-notours", root / ".hidden", root / "avatars" / ".tmp-"]
    for path in strangers:
        path.write_bytes(b"not ours")

    recent = await world.reconcile(apply=True)  # within the grace period: an upload in flight
    assert recent.partial == [] and recent.recent.count == len(planted)
    assert all(path.exists() for path in planted.values())

    dry = await world.reconcile(now=later())
    assert sorted(obj.key for obj in dry.partial) == sorted(planted)
    assert dry.partial_bytes == sum(path.stat().st_size for path in planted.values())
    assert dry.clean and all(path.exists() for path in planted.values())

    applied = await world.reconcile(now=later(), apply=True)
    assert applied.deleted.count == len(planted) and applied.clean
    assert not any(path.exists() for path in planted.values())
    assert not (root / "avatars" / ("c" * 32)).exists(), "the emptied folder is removed"
    assert all(path.exists() for path in strangers)
    assert await store_snapshot(world.storage) == before


async def test_an_avatar_replaced_during_gc_is_not_reported_missing(world: World) -> None:
    """Rows are read after the listing, so a key may be checked with ``exists`` after a newer
    upload replaced its row and deleted it: that is no missing object, and no exit 1."""
    replaced: list[str] = []

    async def upload_after_the_listing() -> None:
        world.storage.after_list = None
        assert (await world.upload("alice")).status_code == 201

    async def replace_before_exists(key: str) -> None:
        if not replaced:
            replaced.append(key)
            assert (await world.upload("alice")).status_code == 201

    world.storage.after_list = upload_after_the_listing
    world.storage.before_exists = replace_before_exists
    report = await world.reconcile(now=later())
    world.storage.before_exists = None
    assert replaced, "the race was not reached"
    assert report.missing == [] and report.clean
    assert report.orphans == []

    # A key the current row still points at is reported as before.
    document = (await world.client.get("/users/alice/avatar")).json()
    lost = object_key(document["version"], "thumb")
    await world.storage.inner.delete(lost)
    assert (await world.reconcile(now=later())).missing == [MissingObject("alice", lost)]


async def test_gc_beside_uploads_crop_changes_and_deletes_never_cries_wolf(world: World) -> None:
    done = asyncio.Event()

    async def churn() -> None:
        try:
            for round_ in range(6):
                assert (await world.upload("alice")).status_code == 201
                patch = await world.client.patch(
                    "/users/me/avatar", headers=world.headers(), json={"crop": "0,0,120,120"}
                )
                assert patch.status_code == 200, patch.text
                if round_ % 2:
                    delete = await world.client.delete("/users/me/avatar", headers=world.headers())
                    assert delete.status_code == 204
        finally:
            done.set()

    task = asyncio.create_task(churn())
    runs = 0
    while not done.is_set() or runs == 0:
        report = await world.reconcile(now=later())
        assert report.missing == [], report.missing
        runs += 1
    await task


@pytest.mark.server
async def test_gc_command_dry_run_then_apply(world: World, tmp_path: Path) -> None:
    await world.plant(ORPHANS)
    kept = await referenced(world.storage)
    orphan_bytes = sum(map(len, ORPHANS.values()))

    code, out, err = await run_cli(world.settings, "gc", "--grace", "0", cwd=tmp_path)
    assert code == 0, err
    summary = gc_summary(out)
    assert summary["orphans"] == (len(ORPHANS), orphan_bytes)
    assert summary["referenced"] == (len(kept), sum(map(len, kept.values())))
    assert summary["scanned"] == (
        len(kept) + len(ORPHANS),
        sum(map(len, kept.values())) + orphan_bytes,
    )
    assert "deleted" not in summary
    assert "dry run: nothing deleted" in out
    assert await store_snapshot(world.storage) == kept | ORPHANS

    code, out, err = await run_cli(world.settings, "gc", "--grace", "0", "--apply", cwd=tmp_path)
    assert code == 0, err
    assert gc_summary(out)["deleted"] == (len(ORPHANS), orphan_bytes)
    assert await store_snapshot(world.storage) == kept


@pytest.mark.server
async def test_gc_command_exits_1_when_an_avatar_misses_objects(world: World, tmp_path) -> None:
    document = (await world.client.get("/users/alice/avatar")).json()
    lost = object_key(document["version"], "original")
    await world.storage.inner.delete(lost)
    code, out, _err = await run_cli(world.settings, "gc", cwd=tmp_path)
    assert code == 1
    assert f"missing {lost} (avatar of user 'alice')" in out
    assert "avatars with missing objects: 1" in out


@pytest.mark.server
async def test_gc_command_reports_an_unusable_store_in_one_line(
    store_settings: Settings, tmp_path: Path
) -> None:
    if store_settings.storage == "s3":
        broken = store_settings.model_copy(update={"s3_bucket": "no-such-bucket-here"})
        reason = "S3 bucket 'no-such-bucket-here' does not exist"
    else:
        store_settings.media_path.parent.mkdir(parents=True, exist_ok=True)
        store_settings.media_path.write_text("a file where the folder should be")
        broken = store_settings
        reason = "cannot be created"
    code, out, err = await run_cli(broken, "gc", cwd=tmp_path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: the storage cannot be used: ")
    assert reason in err
    assert "Traceback" not in err


@pytest.mark.server
async def test_gc_command_refuses_a_negative_grace(store_settings: Settings, tmp_path) -> None:
    code, _out, err = await run_cli(store_settings, "gc", "--grace", "-1", cwd=tmp_path)
    assert code == 2
    assert "grace" in err
