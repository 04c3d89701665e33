"""The bulk commands (app/cli/maintenance.py) as an operator runs them: ``import``,
``reprocess`` and ``process`` in child processes (``python -m app.cli``), checked against the
rows, the stored objects and the files they leave behind; refused arguments through Typer's
runner. The store is the suite's (local, or moto's S3 with AVATAR_TEST_STORAGE=s3). ``gc`` is
tested with its reconciler, in tests/services/test_gc.py."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Settings
from app.db.models import Avatar
from app.db.session import create_engine, create_sessionmaker
from app.imaging.pipeline import CropBox
from app.services.avatars import recrop_avatar, replace_avatar
from app.services.runtime import close_storage, open_runtime
from app.storage import build_storage
from tests.conftest import make_settings
from tests.images import encode, face_photo, jpeg_with_metadata
from tests.services.support import child_env, run_cli, store_snapshot

# The sizes the avatars are made with, and the ones `reprocess` is run with.
BEFORE = {"thumbnail_size": 400, "thumbnail_sizes": [400, 256, 128, 64]}
AFTER = {"thumbnail_size": 300, "thumbnail_sizes": [300, 100]}
AFTER_SQUARES = {"thumb": 300, "thumb-100": 100}


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return make_settings(tmp_path, database_url=sqlite_url, **BEFORE)


def checkpoint_path(settings: Settings) -> Path:
    return settings.data_dir / "reprocess-checkpoint.json"


async def rows(settings: Settings) -> dict[str, Avatar]:
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return {a.user_id: a for a in await session.scalars(select(Avatar))}
    finally:
        await engine.dispose()


async def objects(settings: Settings) -> dict[str, bytes]:
    storage = build_storage(settings)
    try:
        return await store_snapshot(storage)
    finally:
        close_storage(storage)


async def make_avatars(
    settings: Settings, users: list[str], *, size: tuple[int, int] = (500, 400)
) -> None:
    """Avatars made as uploads make them, with the settings' sizes, as many at once as the
    image pool queues."""
    async with open_runtime(settings) as runtime, asyncio.TaskGroup() as group:
        room = asyncio.Semaphore(settings.queue_size)

        async def make(user: str, data: bytes) -> None:
            async with room:
                await replace_avatar(runtime.writes(), user_id=user, upload=data)

        for number, user in enumerate(users):
            group.create_task(
                make(user, jpeg_with_metadata(size, color=(20 * number % 256, 90, 160)))
            )


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_current(avatar: Avatar, store: dict[str, bytes], squares: dict[str, int]) -> None:
    """The row lists the original and exactly ``squares``, and each object is that WebP."""
    assert set(avatar.variants.names) == {"original", *squares}
    for variant in avatar.variants:
        image = image_of(store[variant.key])
        assert image.format == "WEBP"
        assert image.size == (variant.width, variant.height)
        assert len(store[variant.key]) == variant.bytes
        if variant.name in squares:
            side = squares[variant.name]
            assert image.size == (side, side), variant.name


def referenced(avatars: dict[str, Avatar]) -> set[str]:
    return {key for avatar in avatars.values() for key in avatar.keys}


def test_import_requires_a_rule_for_users() -> None:
    result = CliRunner().invoke(cli, ["import", "anywhere"])
    assert result.exit_code == 2
    assert "--user-from-filename" in result.stderr and "alice" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output


def test_process_refuses_a_malformed_crop(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["process", "a.jpg", "--out", str(out), "--crop", "1,2,3"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --crop: ") and result.stderr.count("\n") == 1
    assert not out.exists()


# import ----------------------------------------------------------------------------------------


def import_folder(root: Path) -> Path:
    folder = root / "legacy"
    (folder / "nested").mkdir(parents=True)
    (folder / "alice.jpg").write_bytes(jpeg_with_metadata((640, 480), orientation=6))
    (folder / "bob.png").write_bytes(
        encode(Image.new("RGBA", (300, 200), (0, 90, 200, 128)), "PNG")
    )
    (folder / "carol.txt").write_bytes(b"not an image at all")
    (folder / "dave.jpg").write_bytes(jpeg_with_metadata((640, 480))[:700])  # truncated
    (folder / "erin.jpg").write_bytes(jpeg_with_metadata((64, 64)))
    (folder / "erin.png").write_bytes(encode(Image.new("RGB", (64, 64)), "PNG"))
    (folder / "frank.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 300_000)  # over the limit
    (folder / "tab\tname.jpg").write_bytes(jpeg_with_metadata((64, 64)))  # not a user id
    (folder / ".hidden.jpg").write_bytes(jpeg_with_metadata((64, 64)))
    (folder / "nested" / "grace.jpg").write_bytes(jpeg_with_metadata((64, 64)))
    return folder


@pytest.mark.server
async def test_import_stores_good_files_and_reports_each_reject(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, max_upload_bytes=200_000)
    folder = import_folder(tmp_path)
    code, out, err = await run_cli(
        settings, "import", str(folder), "--user-from-filename", "--json", cwd=tmp_path
    )
    assert code == 1, err  # some files were rejected
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["imported"] == [
        {"file": "alice.jpg", "user_id": "alice"},
        {"file": "bob.png", "user_id": "bob"},
    ]
    assert summary["rejects_by_code"] == {
        "corrupt_image": ["dave.jpg"],
        "duplicate_name": ["erin.jpg", "erin.png"],
        "image_too_large": ["frank.jpg"],
        "invalid_user_id": ["tab\tname.jpg"],
        "unsupported_format": ["carol.txt"],
    }
    assert all(reject["detail"] for reject in summary["rejected"])
    assert summary["ignored"] == 2  # .hidden.jpg and nested/

    avatars = await rows(settings)
    assert sorted(avatars) == ["alice", "bob"]
    alice = avatars["alice"]
    assert (alice.width, alice.height) == (480, 640)  # turned upright as an upload is
    assert alice.orientation_applied == 6 and "exif.gps" in alice.metadata_removed
    store = await objects(settings)
    assert set(store) == referenced(avatars)  # rejects left nothing behind
    squares = {"thumb": 400, "thumb-256": 256, "thumb-128": 128, "thumb-64": 64}
    assert_current(alice, store, squares)
    assert "exif" not in image_of(store[alice.variants.original.key]).info
    assert image_of(store[avatars["bob"].variants.original.key]).size == (300, 200)


@pytest.mark.server
async def test_import_dry_run_stores_nothing_and_skip_existing_continues(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for user in ("ann", "ben"):
        (folder / f"{user}.jpg").write_bytes(jpeg_with_metadata((120, 90)))
    odd = folder / "[bold]:x:.txt"  # printed as it is, not read as Rich markup or emoji
    odd.write_bytes(b"hello")

    code, out, err = await run_cli(
        settings, "import", str(folder), "--user-from-filename", "--dry-run", cwd=tmp_path
    )
    assert code == 1, err
    assert "dry run: nothing stored" in out
    assert [line.split()[-1] for line in out.splitlines() if "would be imported" in line] == ["2"]
    assert "rejected [bold]:x:.txt: unsupported_format: " in out
    assert await rows(settings) == {} and await objects(settings) == {}
    odd.unlink()

    await make_avatars(settings, ["ann"])
    before = (await rows(settings))["ann"].version
    code, out, err = await run_cli(
        settings,
        "import",
        str(folder),
        "--user-from-filename",
        "--skip-existing",
        "--json",
        cwd=tmp_path,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert [item["file"] for item in summary["skipped"]] == ["ann.jpg"]
    assert summary["imported"] == [{"file": "ben.jpg", "user_id": "ben"}]
    avatars = await rows(settings)
    assert avatars["ann"].version == before and "ben" in avatars


@pytest.mark.server
async def test_bulk_commands_report_an_unusable_store_in_one_line(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, storage="local")
    settings.media_path.parent.mkdir(parents=True, exist_ok=True)
    settings.media_path.write_text("a file where the folder should be")
    folder = tmp_path / "in"
    folder.mkdir()
    for args in (["import", str(folder), "--user-from-filename"], ["reprocess"]):
        code, out, err = await run_cli(settings, *args, cwd=tmp_path)
        assert code == 2, (args, err)
        assert out == "" and "Traceback" not in err
        assert err.startswith("error: the storage cannot be used: ") and err.count("\n") == 1


# reprocess -------------------------------------------------------------------------------------


@pytest.mark.server
async def test_reprocess_derives_every_avatar_again_with_the_current_sizes(
    settings: Settings, tmp_path: Path
) -> None:
    users = ["ann", "ben", "cat"]
    await make_avatars(settings, users)
    async with open_runtime(settings) as runtime:  # ben chose a crop: it is kept
        await recrop_avatar(runtime.writes(), user_id="ben", crop=CropBox(10, 20, 320, 320))
    before = await rows(settings)

    changed = settings.model_copy(update=AFTER)
    code, out, err = await run_cli(changed, "reprocess", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out) == {
        "resumed_after": None,
        "done": 3,
        "skipped": [],
        "failed": [],
        "checkpoint": None,
    }
    assert "reprocess" in err and "3/3" in err  # the progress bar, on stderr
    avatars = await rows(settings)
    store = await objects(settings)
    assert set(store) == referenced(avatars), "old squares are deleted, nothing else"
    for user in users:
        assert avatars[user].version != before[user].version
        assert avatars[user].variants.original == before[user].variants.original
        assert_current(avatars[user], store, AFTER_SQUARES)
    assert avatars["ben"].crop == [10, 20, 320, 320]
    assert not checkpoint_path(settings).exists()


@pytest.mark.server
async def test_reprocess_auto_crop_proposes_crops_and_leaves_client_crops_alone(
    settings: Settings, tmp_path: Path
) -> None:
    centred = settings.model_copy(update={"auto_crop": "centre"})
    photo, (face_x, face_y, face_w, face_h) = face_photo((1200, 600), face_left=850, face_width=250)
    async with open_runtime(centred) as runtime:  # stored before the automatic crop
        for user in ("ann", "ben", "cat"):
            await replace_avatar(runtime.writes(), user_id=user, upload=photo)
        # ben chose his square
        await recrop_avatar(runtime.writes(), user_id="ben", crop=CropBox(0, 0, 500, 500))
    engine = create_engine(settings.database_url)
    try:  # cat's row is as rows made before crop_source was recorded
        async with create_sessionmaker(engine)() as session, session.begin():
            await session.execute(
                update(Avatar).where(Avatar.user_id == "cat").values(crop=None, crop_source=None)
            )
    finally:
        await engine.dispose()
    before = await rows(settings)
    assert before["ann"].crop_source == "centre"

    faces = settings.model_copy(update={"auto_crop": "face"})
    code, out, err = await run_cli(faces, "reprocess", "--auto-crop", "--json", cwd=tmp_path)
    assert code == 0, err
    report = json.loads(out)
    assert report["done"] == 2 and report["failed"] == []
    assert [(s["user_id"], s["code"]) for s in report["skipped"]] == [("ben", "client_crop")]
    assert "reprocess --auto-crop" in err  # the progress bar
    avatars = await rows(settings)
    for user in ("ann", "cat"):
        avatar = avatars[user]
        assert avatar.crop_source == "face"
        x, y, side, _ = avatar.crop  # the original is 1200x600: its pixels are the photo's
        assert x <= face_x and y <= face_y
        assert face_x + face_w <= x + side and face_y + face_h <= y + side
        assert avatar.variants.original == before[user].variants.original
    assert avatars["ben"].crop == [0, 0, 500, 500] and avatars["ben"].crop_source == "client"
    assert avatars["ben"].version == before["ben"].version
    assert set(await objects(settings)) == referenced(avatars)
    assert not checkpoint_path(settings).exists()


@pytest.mark.server
async def test_reprocess_retries_failed_users_then_continues_after_the_checkpoint(
    settings: Settings, tmp_path: Path
) -> None:
    users = ["ann", "ben", "cat", "dan"]
    await make_avatars(settings, users)
    before = await rows(settings)
    lost_key = before["ben"].variants.original.key
    lost = (await objects(settings))[lost_key]
    storage = build_storage(settings)
    try:
        await storage.delete(lost_key)

        changed = settings.model_copy(update=AFTER)
        code, out, err = await run_cli(changed, "reprocess", cwd=tmp_path)
        assert code == 1, err
        assert "failed 'ben': storage_unavailable: " in out
        assert "Traceback" not in err
        saved = json.loads(checkpoint_path(settings).read_text())
        assert (saved["after"], saved["failed"]) == ("dan", ["ben"])
        first = await rows(settings)
        assert first["ben"].version == before["ben"].version
        for user in ("ann", "cat", "dan"):
            assert first[user].version != before[user].version

        # The checkpoint belongs to these sizes: with others, a rerun refuses to resume.
        other = settings.model_copy(update={"thumbnail_sizes": [300, 50]})
        code, out, err = await run_cli(other, "reprocess", cwd=tmp_path)
        assert code == 2 and out == ""
        assert "--restart" in err and err.count("\n") == 1

        await storage.put(lost_key, lost, "image/webp")
        code, out, err = await run_cli(changed, "reprocess", "--json", cwd=tmp_path)
        assert code == 0, err
        summary = json.loads(out)
        assert (summary["resumed_after"], summary["done"]) == ("dan", 1)
        assert "resuming after user 'dan', 1 failed users first" in err
    finally:
        close_storage(storage)
    final = await rows(settings)
    for user in ("ann", "cat", "dan"):
        assert final[user].version == first[user].version, "finished users are not redone"
    store = await objects(settings)
    for user in users:
        assert_current(final[user], store, AFTER_SQUARES)
    assert not checkpoint_path(settings).exists()


@pytest.mark.server
async def test_reprocess_interrupted_by_ctrl_c_continues_where_it_stopped(
    settings: Settings, tmp_path: Path
) -> None:
    users = [f"user{number:02d}" for number in range(10)]
    await make_avatars(settings, users, size=(1200, 900))
    changed = settings.model_copy(update=AFTER)
    checkpoint = checkpoint_path(settings)

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "reprocess",
        "--json",
        cwd=tmp_path,
        env=child_env(changed),
        stdout=PIPE,
        stderr=PIPE,
        # Ctrl-C as at a terminal, even when the suite itself runs in the background (where
        # SIGINT is ignored, and a child inherits that).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    stopped_after = None
    try:
        async with asyncio.timeout(60):
            while stopped_after is None and child.returncode is None:
                await asyncio.sleep(0.005)
                if checkpoint.exists():
                    stopped_after = json.loads(checkpoint.read_text())["after"]
            child.send_signal(signal.SIGINT)
            out, err = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 130, err.decode()
    assert out == b"" and b"Traceback" not in err
    after = json.loads(checkpoint.read_text())["after"]
    assert after is not None and after < users[-1], "Ctrl-C came after the last user"
    assert (
        f"interrupted: run `avatar-service reprocess` again to continue after user {after!r}"
        in (err.decode())
    )
    interrupted = await rows(settings)

    code, out, err = await run_cli(changed, "reprocess", "--json", cwd=tmp_path)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["resumed_after"] == after
    assert summary["done"] == len([user for user in users if user > after])
    final = await rows(settings)
    store = await objects(settings)
    for user in users:
        if user <= after:
            assert final[user].version == interrupted[user].version
        assert_current(final[user], store, AFTER_SQUARES)
    assert not checkpoint.exists()


# process ---------------------------------------------------------------------------------------


@pytest.mark.server
async def test_process_writes_each_files_variants_and_report(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage="local", **BEFORE)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "photo.jpg").write_bytes(jpeg_with_metadata((640, 480), orientation=6))
    (inputs / "logo.png").write_bytes(encode(Image.new("RGBA", (90, 60), (0, 0, 0, 0)), "PNG"))
    (inputs / "notes.txt").write_bytes(b"hello")
    out_dir = tmp_path / "out"
    files = [str(inputs / name) for name in ("photo.jpg", "logo.png", "notes.txt", "gone.jpg")]

    code, out, err = await run_cli(
        settings, "process", *files, "--out", str(out_dir), "--json", cwd=tmp_path
    )
    assert code == 1, err
    summary = json.loads(out)
    assert summary["rejects_by_code"] == {
        "unreadable_file": [files[3]],
        "unsupported_format": [files[2]],
    }
    assert [item["file"] for item in summary["processed"]] == [files[1], files[0]]
    assert sorted(path.name for path in out_dir.iterdir()) == ["logo", "photo"]

    photo: dict[str, Any] = json.loads((out_dir / "photo" / "report.json").read_text())
    assert (photo["width"], photo["height"], photo["orientation_applied"]) == (480, 640, 6)
    assert {"exif.gps", "exif.camera", "xmp", "comment"} <= set(photo["metadata_removed"])
    assert photo["placeholder"]["blurhash"] and photo["placeholder"]["dominant_color"][0] == "#"
    for report, folder in ((photo, out_dir / "photo"), (None, out_dir / "logo")):
        report = report or json.loads((folder / "report.json").read_text())
        names = {variant["name"] for variant in report["variants"]}
        assert names == {"original", "thumb", "thumb-256", "thumb-128", "thumb-64"}
        assert {path.name for path in folder.iterdir()} == {
            "report.json",
            *(f"{name}.webp" for name in names),
        }
        for variant in report["variants"]:
            data = (folder / variant["file"]).read_bytes()
            image = image_of(data)
            assert image.format == "WEBP" and "exif" not in image.info
            assert image.size == (variant["width"], variant["height"])
            assert len(data) == variant["bytes"]
    assert not settings.data_dir.exists(), "no database, no media folder"

    code, out, err = await run_cli(
        settings, "process", files[0], "--out", str(out_dir), "--crop", "0,0,200,100", cwd=tmp_path
    )
    assert code == 0, err
    assert "processed 1 of 1" in out
    assert image_of((out_dir / "photo" / "original.webp").read_bytes()).size == (200, 100)
