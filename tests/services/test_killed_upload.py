"""A process killed (SIGKILL) in the middle of an upload leaves only orphans, which ``gc`` finds
and, with ``--apply``, removes; the previous avatar is untouched throughout."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.storage import build_storage
from tests.conftest import running_app
from tests.images import jpeg_with_metadata
from tests.services.support import (
    child_env,
    gc_report,
    gc_summary,
    run_cli,
    store_snapshot,
    table_snapshot,
)

pytestmark = [pytest.mark.server, pytest.mark.long]


async def kill_upload_at(settings: Settings, point: str, tmp_path: Path) -> None:
    """Run an upload in a child process and SIGKILL it once it reports it reached ``point``."""
    image = tmp_path / "new.jpg"
    image.write_bytes(jpeg_with_metadata((320, 240), color=(0, 0, 255)))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.services.upload_child", point, str(image),
        cwd=tmp_path, env=child_env(settings), stdout=PIPE, stderr=PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=60)  # type: ignore[union-attr]
        if line.strip() != b"ready":
            _out, err = await child.communicate()
            pytest.fail(f"the child did not reach {point}: {err.decode()[-2000:]}")
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    assert child.returncode == -9


async def upload_first_avatar(settings: Settings) -> httpx.Response:
    """Alice's avatar before the killed upload: the one that must survive it."""
    async with running_app(settings) as (client, auth):
        first = await client.post(
            "/users/me/avatar",
            headers=auth(),
            files={"file": ("a.jpg", jpeg_with_metadata((320, 240)), "image/jpeg")},
        )
    assert first.status_code == 201
    return first


@pytest.mark.parametrize("point", ["after-puts", "at-commit"])
async def test_killed_upload_leaves_orphans_that_gc_removes(
    settings: Settings, point: str, tmp_path: Path
) -> None:
    first = await upload_first_avatar(settings)
    storage = build_storage(settings)
    try:
        store_before = await store_snapshot(storage)
        table_before = await table_snapshot(settings.database_url)

        await kill_upload_at(settings, point, tmp_path)

        # Nothing was committed; the new objects are all there, unreferenced.
        assert await table_snapshot(settings.database_url) == table_before
        after = await store_snapshot(storage)
        orphans = set(after) - set(store_before)
        assert len(orphans) == len(store_before), "one orphan per variant of the killed upload"
        assert {key: after[key] for key in store_before} == store_before
        orphan_bytes = sum(len(after[key]) for key in orphans)

        # With the default grace period the fresh orphans might be an upload in flight: kept.
        report = await gc_report(settings)
        assert (report.recent.count, report.recent.bytes) == (len(orphans), orphan_bytes)
        assert report.orphans == []

        # Past the grace period: the command's dry run reports them and deletes nothing.
        code, out, err = await run_cli(settings, "gc", "--grace", "0", "--list", cwd=tmp_path)
        assert code == 0, err
        summary = gc_summary(out)
        assert summary["orphans"] == (len(orphans), orphan_bytes)
        assert summary["referenced"] == (len(store_before), sum(map(len, store_before.values())))
        assert "dry run" in out
        for key in orphans:
            assert key in out
        assert await store_snapshot(storage) == after

        # --apply deletes exactly the orphans.
        code, out, err = await run_cli(settings, "gc", "--grace", "0", "--apply", cwd=tmp_path)
        assert code == 0, err
        assert gc_summary(out)["deleted"] == (len(orphans), orphan_bytes)
        assert await store_snapshot(storage) == store_before
        assert await table_snapshot(settings.database_url) == table_before
        assert (await gc_report(settings, grace=0)).orphans == []
    finally:
        close = getattr(storage, "close", None)
        if close is not None:
            close()

    async with running_app(settings) as (client, auth):
        assert (await client.get("/users/me/avatar", headers=auth())).json() == first.json()


@pytest.mark.local_store
async def test_a_write_killed_before_its_rename_leaves_a_temp_file_that_gc_removes(
    settings: Settings, tmp_path: Path
) -> None:
    if settings.storage != "local":
        pytest.skip("S3 writes are atomic: a killed put leaves nothing behind")
    first = await upload_first_avatar(settings)
    root = settings.media_path
    files_before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    table_before = await table_snapshot(settings.database_url)

    await kill_upload_at(settings, "mid-write", tmp_path)

    temp_files = sorted(root.rglob(".tmp-*"))
    assert len(temp_files) == 1 and temp_files[0].stat().st_size > 0
    name = temp_files[0].relative_to(root).as_posix()

    assert (await gc_report(settings)).partial == []  # fresh: maybe an upload in flight
    code, out, err = await run_cli(settings, "gc", "--grace", "0", "--list", cwd=tmp_path)
    assert code == 0, err
    assert gc_summary(out)["unfinished writes"] == (1, temp_files[0].stat().st_size)
    assert f"unfinished {name}" in out and "dry run" in out
    assert temp_files[0].exists()

    code, out, err = await run_cli(settings, "gc", "--grace", "0", "--apply", cwd=tmp_path)
    assert code == 0, err
    assert not list(root.rglob(".tmp-*"))
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == files_before
    assert await table_snapshot(settings.database_url) == table_before
    async with running_app(settings) as (client, auth):
        assert (await client.get("/users/me/avatar", headers=auth())).json() == first.json()
