"""Local storage faults: a full disk is 507 ``insufficient_storage``, a failing one is 503
``storage_unavailable``; never a 500, nothing half-written.

Two ways to fill the disk:

- a real filesystem that runs out of space: a small tmpfs mounted as the media root (needs
  root, as on the project's machines and in CI; skipped for other users), filled up to a
  chosen number of free pages so that the upload's first file, or a later one, hits ENOSPC;
- on any machine, files whose writes run out of a byte quota part-way and raise ENOSPC or
  EDQUOT, under the real ``LocalStorage`` code (its temp file, fsync and rename).

Each time: the answer is 507 problem+json with ``Retry-After``; no temp file, no partial file,
no new object and no row change is left; the previous avatar is intact; and the next upload
succeeds once there is room again, without a restart. Other disk errors (EIO) on a write or a
read are 503 ``storage_unavailable``. (S3 faults: tests/services/test_upload_faults.py.)
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.core.config import Settings
from app.core.security import create_token
from app.imaging.pipeline import process_image
from app.main import create_app
from app.services.runtime import pipeline_options
from app.storage.local import LocalStorage
from tests.client import assert_problem, upload
from tests.conftest import make_settings, missing, serving
from tests.images import jpeg_with_metadata
from tests.services.support import FaultyStorage, store_snapshot, table_snapshot

PAGE = os.sysconf("SC_PAGE_SIZE")
TMPFS_BYTES = 4 * 1024 * 1024


def noisy_jpeg(size: tuple[int, int] = (900, 700)) -> bytes:
    """A photo-sized JPEG of noise: its WebP variants are large (hundreds of KB)."""
    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def files_under(root: Path) -> dict[str, bytes]:
    """Every file below ``root``, hidden ones (temp files) included."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_insufficient_storage(response: httpx.Response) -> None:
    assert_problem(response, 507, "insufficient_storage")
    assert int(response.headers["retry-after"]) > 0


@asynccontextmanager
async def local_app(
    settings: Settings, storage: LocalStorage
) -> AsyncIterator[tuple[httpx.AsyncClient, FaultyStorage]]:
    recorder = FaultyStorage(storage)  # no faults switched on: it records what was written
    async with serving(create_app(settings, storage=recorder)) as client:
        client.headers["Authorization"] = f"Bearer {create_token(settings, 'alice')}"
        yield client, recorder


# A real full filesystem -------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the simulated ENOSPC tests still run)")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        missing(f"cannot mount a tmpfs as root: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(root: Path, leave: int) -> Path:
    """Fill the filesystem of ``root`` until exactly ``leave`` bytes (whole pages) are free."""
    filler = root / ".filler"  # a hidden name is never a key: the service never lists it
    with open(filler, "wb") as handle:
        handle.write(b"\0" * (free_bytes(root) - leave))
    assert free_bytes(root) == leave
    return filler


def pages(size: int) -> int:
    return -(-size // PAGE)


@pytest.mark.server  # mounts a tmpfs
@pytest.mark.parametrize("fails_at", ["original", "thumb"])
async def test_a_full_filesystem_gives_507_and_leaves_nothing(
    tmp_path: Path, sqlite_url: str, fails_at: str
) -> None:
    media = tmp_path / "media"
    with tmpfs(media, TMPFS_BYTES):
        settings = make_settings(
            tmp_path, database_url=sqlite_url, storage="local", media_root=media
        )
        photo = noisy_jpeg()
        variants = process_image(photo, pipeline_options(settings)).variants
        assert [v.name for v in variants[:2]] == ["original", "thumb"]
        original_pages = pages(len(variants[0].data))
        assert original_pages > 2
        # "original": room for part of the first file. "thumb": room for the original alone,
        # so the second file fails after the first was written and must be deleted again.
        leave = (original_pages // 2 if fails_at == "original" else original_pages) * PAGE

        async with local_app(settings, LocalStorage(media)) as (client, storage):
            first = await upload(client, image=jpeg_with_metadata((320, 240)))
            assert first.status_code == 201, first.text
            store_before = await store_snapshot(storage)
            table_before = await table_snapshot(settings.database_url)
            filler = fill(media, leave)
            files_before = files_under(media)
            written_before = len(storage.written)

            assert_insufficient_storage(await upload(client, image=photo))

            written = [key.rsplit("/", 1)[1] for key in storage.written[written_before:]]
            assert written == ([] if fails_at == "original" else ["original.webp"])
            assert files_under(media) == files_before, "a temp or partial file was left"
            assert await store_snapshot(storage) == store_before
            assert await table_snapshot(settings.database_url) == table_before
            assert (await client.get("/users/me/avatar")).json()["version"] == first.json()[
                "version"
            ]
            assert (await client.get(first.json()["avatar_url"])).status_code == 200

            filler.unlink()  # an operator makes room: the next upload works, no restart
            again = await upload(client, image=photo)
            assert again.status_code == 201, again.text
            assert (await client.get(again.json()["avatar_url"])).status_code == 200


# Simulated: writes that run out of a byte quota -------------------------------------------------


class Quota:
    """Stands in for ``open`` in ``app.storage.local``: files opened for writing share a byte
    quota; the write that passes it writes what fits, then raises ``OSError(code)``."""

    def __init__(self, limit: int | None, code: int) -> None:
        self.limit = limit
        self.code = code
        self.used = 0
        self.failures = 0
        self.fail_reads = False

    def __call__(self, file, mode="r", *args, **kwargs):
        if "r" in mode and self.fail_reads:
            raise OSError(self.code, os.strerror(self.code))
        handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (closed by its user)
        return _QuotaFile(handle, self) if "w" in mode else handle


class _QuotaFile:
    def __init__(self, handle, quota: Quota) -> None:
        self._handle = handle
        self._quota = quota

    def write(self, data: bytes) -> int:
        quota = self._quota
        if quota.limit is not None and quota.used + len(data) > quota.limit:
            room = max(quota.limit - quota.used, 0)
            self._handle.write(data[:room])
            quota.used += room
            quota.failures += 1
            raise OSError(quota.code, os.strerror(quota.code))
        quota.used += len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
@pytest.mark.parametrize("fails_at", ["original", "thumb"])
async def test_writes_that_run_out_of_space_give_507_and_leave_nothing(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, code: int, fails_at: str
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, storage="local")
    media = settings.media_path
    quota = Quota(None, code)
    monkeypatch.setattr("app.storage.local.open", quota, raising=False)
    photo = noisy_jpeg((600, 400))
    original = process_image(photo, pipeline_options(settings)).variants[0]

    async with local_app(settings, LocalStorage(media)) as (client, storage):
        first = await upload(client, image=jpeg_with_metadata((320, 240)))
        assert first.status_code == 201, first.text
        store_before = await store_snapshot(storage)
        table_before = await table_snapshot(settings.database_url)
        files_before = files_under(media)
        written_before = len(storage.written)

        room = len(original.data) // 2 if fails_at == "original" else len(original.data) + 100
        quota.used, quota.limit = 0, room
        assert_insufficient_storage(await upload(client, image=photo))
        assert quota.failures == 1 and quota.used == room  # it failed part-way, as a disk does

        written = [key.rsplit("/", 1)[1] for key in storage.written[written_before:]]
        assert written == ([] if fails_at == "original" else ["original.webp"])
        assert files_under(media) == files_before, "a temp or partial file was left"
        assert await store_snapshot(storage) == store_before
        assert await table_snapshot(settings.database_url) == table_before

        quota.limit = None
        again = await upload(client, image=photo)
        assert again.status_code == 201, again.text


async def test_other_storage_write_errors_stay_503(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a full disk is 507: any other write error (here EIO) is 503 storage_unavailable."""
    settings = make_settings(tmp_path, database_url=sqlite_url, storage="local")
    quota = Quota(10, errno.EIO)
    monkeypatch.setattr("app.storage.local.open", quota, raising=False)
    async with local_app(settings, LocalStorage(settings.media_path)) as (client, storage):
        response = await upload(client, image=jpeg_with_metadata((320, 240)))
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "storage_unavailable"
        assert files_under(settings.media_path) == {}


async def test_a_disk_that_fails_reads_gives_503_not_500(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, storage="local")
    quota = Quota(None, errno.EIO)
    monkeypatch.setattr("app.storage.local.open", quota, raising=False)
    async with local_app(settings, LocalStorage(settings.media_path)) as (client, _storage):
        document = (await upload(client, image=jpeg_with_metadata((320, 240)))).json()
        quota.fail_reads = True
        response = await client.get(document["avatar_url"])
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "storage_unavailable"
        assert int(response.headers["retry-after"]) > 0
        quota.fail_reads = False
        assert (await client.get(document["avatar_url"])).status_code == 200
