"""The pipeline through HTTP: crop, the metadata report, sizes, the still variant, 503 when the
worker pool is full (before the body is read), and /healthz answering while uploads run."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import pytest
from PIL import Image

from app.core.security import create_token
from app.imaging import pipeline
from app.main import create_app
from tests.bodies import CountingBody
from tests.client import assert_problem, files, upload
from tests.conftest import make_settings, running_app, stored_files
from tests.images import (
    assert_clean_webp,
    encode,
    jpeg_with_metadata,
    progressive_jpeg_with_scans,
)
from tests.workers import Hold, is_running


async def fetch(client: httpx.AsyncClient, url: str) -> Image.Image:
    response = await client.get(url)
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def quadrants() -> Image.Image:
    """600x400: red top-left, green top-right, blue bottom-left, white bottom-right."""
    image = Image.new("RGB", (600, 400), (255, 255, 255))
    image.paste((230, 20, 20), (0, 0, 300, 200))
    image.paste((20, 200, 20), (300, 0, 600, 200))
    image.paste((20, 20, 230), (0, 200, 300, 400))
    return image


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 30) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=False))


# Crop -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["query", "form"])
async def test_crop_selects_the_avatar_region(client, auth, where: str) -> None:
    data = encode(quadrants(), "PNG")
    if where == "query":
        response = await upload(client, auth, data, params={"crop": "300,0,300,200"})
    else:
        response = await upload(client, auth, data, data={"crop": "300,0,300,200"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (300, 200)
    original = (await fetch(client, body["avatar_url"])).convert("RGB")
    thumb = (await fetch(client, body["avatar_thumb_url"])).convert("RGB")
    assert thumb.size == (200, 200)
    for image in (original, thumb):
        for point in [(2, 2), (image.width // 2, image.height // 2), (image.width - 3, 3)]:
            assert close(image.getpixel(point), (20, 200, 20)), point


async def test_crop_is_in_upright_pixels(client, auth) -> None:
    upright = quadrants()
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
    response = await upload(client, auth, data, params={"crop": "0,200,300,200"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["orientation_applied"] == 6
    original = (await fetch(client, body["avatar_url"])).convert("RGB")
    assert original.size == (300, 200)
    assert close(original.getpixel((150, 100)), (20, 20, 230))


@pytest.mark.parametrize("crop", ["0,0,601,400", "500,300,200,200", "0,0,0,10", "1,2,3", "x"])
async def test_bad_crop_is_422_invalid_crop_and_changes_nothing(
    client, auth, settings, crop
) -> None:
    response = await upload(client, auth, encode(quadrants(), "PNG"), params={"crop": crop})
    assert_problem(response, 422, "invalid_crop")
    assert stored_files(settings) == []
    assert (await client.get("/users/me/avatar", headers=auth())).status_code == 404


async def test_malformed_crop_is_refused_before_the_body_is_read(client, auth) -> None:
    body = CountingBody(64)

    response = await client.post(
        "/users/me/avatar",
        params={"crop": "not,a,crop"},
        content=body,
        headers={**auth(), "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert_problem(response, 422, "invalid_crop")
    assert body.consumed <= 65536


# Report, sizes, still ---------------------------------------------------------------------------


async def test_response_reports_what_was_removed_and_it_is_kept(client, auth) -> None:
    response = await upload(client, auth, jpeg_with_metadata(orientation=6))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["orientation_applied"] == 6
    assert set(body["metadata_removed"]) == {"exif.gps", "exif.camera", "xmp", "comment"}
    assert (await client.get("/users/me/avatar", headers=auth())).json() == body
    for variant in body["variants"]:
        stored = (await client.get(variant["url"])).content
        assert_clean_webp(stored, markers=(b"SecretCameraMaker", b"secret-xmp", b"secret-comment"))


async def test_response_lists_every_size(client, auth) -> None:
    body = (await upload(client, auth, jpeg_with_metadata((800, 600)))).json()
    sizes = {v["name"]: (v["width"], v["height"], v["frames"]) for v in body["variants"]}
    assert sizes == {
        "original": (800, 600, 1),
        "thumb": (400, 400, 1),
        "thumb-256": (256, 256, 1),
        "thumb-128": (128, 128, 1),
        "thumb-64": (64, 64, 1),
    }
    assert body["animated"] is False
    assert body["avatar_still_url"] == body["avatar_thumb_url"]


async def test_animated_upload_offers_a_still_for_reduced_motion(client, auth) -> None:
    frames = [Image.new("RGB", (60, 60), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)
    response = await upload(client, auth, data)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["animated"] is True
    assert body["avatar_still_url"] != body["avatar_thumb_url"]
    by_name = {v["name"]: v for v in body["variants"]}
    assert by_name["original"]["frames"] == 3 and by_name["still"]["frames"] == 1
    animated = await fetch(client, body["avatar_url"])
    assert animated.n_frames == 3
    still = await fetch(client, body["avatar_still_url"])
    assert getattr(still, "n_frames", 1) == 1
    assert close(still.convert("RGB").getpixel((30, 30)), (255, 0, 0))


async def test_heic_is_415_unless_switched_on(tmp_path, sqlite_url) -> None:
    data = encode(Image.new("RGB", (64, 48), (10, 120, 230)), "HEIF", quality=90)
    settings = make_settings(tmp_path, database_url=sqlite_url)
    async with running_app(settings) as (client, auth):
        assert_problem(await upload(client, auth, data), 415, "unsupported_format")
    settings = make_settings(tmp_path, database_url=sqlite_url, allowed_formats="jpeg,png,heic")
    async with running_app(settings) as (client, auth):
        response = await upload(client, auth, data)
        assert response.status_code == 201, response.text
        assert (response.json()["width"], response.json()["height"]) == (64, 48)


async def test_original_cap_and_sizes_come_from_settings(tmp_path, sqlite_url) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, original_max_side=500, thumbnail_sizes="100"
    )
    async with running_app(settings) as (client, auth):
        body = (await upload(client, auth, jpeg_with_metadata((1000, 800)))).json()
    assert (body["width"], body["height"]) == (500, 400)
    assert [v["name"] for v in body["variants"]] == ["original", "thumb", "thumb-100"]


# Worker pool: 503 when full, the event loop free -----------------------------------------------


def blocking_pipeline(monkeypatch, tmp_path) -> Hold:
    """Make processing, in the worker process, wait for the hold's release."""
    hold = Hold(tmp_path / "hold")
    monkeypatch.setattr("app.services.avatars.process_image", hold.job(pipeline.process_image))
    return hold


async def test_full_pool_is_503_with_retry_after_before_reading_the_body(
    tmp_path, sqlite_url, monkeypatch
) -> None:
    hold = blocking_pipeline(monkeypatch, tmp_path)
    settings = make_settings(tmp_path, database_url=sqlite_url, workers=1, queue_size=0)
    async with running_app(settings) as (client, auth):
        first = asyncio.create_task(upload(client, auth, jpeg_with_metadata()))
        await hold.wait_started()
        body = CountingBody(64)

        refused = await client.post(
            "/users/me/avatar",
            content=body,
            headers={**auth("bob"), "Content-Type": "multipart/form-data; boundary=x"},
        )
        assert_problem(refused, 503, "server_busy")
        assert int(refused.headers["retry-after"]) >= 1
        assert body.consumed <= 65536, "the refused upload's body was read"
        hold.release()
        assert (await first).status_code == 201
        assert (await upload(client, auth, jpeg_with_metadata())).status_code == 201


async def test_healthz_answers_while_uploads_are_processed(
    tmp_path, sqlite_url, monkeypatch
) -> None:
    hold = blocking_pipeline(monkeypatch, tmp_path)
    settings = make_settings(tmp_path, database_url=sqlite_url, workers=2, queue_size=4)
    async with running_app(settings) as (client, auth):
        uploads = [
            asyncio.create_task(
                client.post(
                    "/users/me/avatar", headers=auth(f"user{i}"), files=files(jpeg_with_metadata())
                )
            )
            for i in range(4)
        ]
        await hold.wait_started()
        latencies = []
        for _ in range(20):
            start = time.perf_counter()
            response = await client.get("/healthz")
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200
        assert not any(task.done() for task in uploads), "the uploads were not in flight"
        hold.release()
        assert [(await task).status_code for task in uploads] == [201] * 4
    assert max(latencies) < 0.5, latencies  # the benchmark measures the real p99 under load


async def test_a_client_gone_mid_processing_stops_its_job_and_frees_its_place(
    tmp_path, sqlite_url, monkeypatch
) -> None:
    """The body arrives whole, then the client closes the connection while its image is being
    processed: the job's worker is killed at once (not left to its deadline), nothing is
    stored, and the place is free for the next upload."""
    hold = blocking_pipeline(monkeypatch, tmp_path)
    settings = make_settings(tmp_path, database_url=sqlite_url, workers=1, queue_size=0)
    application = create_app(settings)
    token = create_token(settings, "alice")
    request = httpx.Request(
        "POST",
        "http://testserver/users/me/avatar",
        headers={"Authorization": f"Bearer {token}"},
        files=files(jpeg_with_metadata()),
    )
    body = request.read()
    gone = asyncio.Event()
    bodies_sent = 0

    async def receive() -> dict:
        nonlocal bodies_sent
        if bodies_sent == 0:
            bodies_sent += 1
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/users/me/avatar",
        "raw_path": b"/users/me/avatar",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in request.headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    async with application.router.lifespan_context(application):
        task = asyncio.create_task(application(scope, receive, send))
        (pid,) = await hold.wait_started()
        gone.set()
        await asyncio.wait_for(task, 10)  # the held job alone would wait 30 s for its release
        assert not is_running(pid)
        assert application.state.runtime.pool.in_flight == 0
        assert stored_files(settings) == []
        hold.release()
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            again = await client.post(
                "/users/me/avatar",
                headers={"Authorization": f"Bearer {token}"},
                files=files(jpeg_with_metadata()),
            )
            assert again.status_code == 201


# Storage of the report ------------------------------------------------------------------------


# Work bounded: too complex to decode, or past the job deadline -----------------------------------


async def test_a_jpeg_of_countless_scans_is_422_and_changes_nothing(client, auth, settings) -> None:
    first = await upload(client, auth, jpeg_with_metadata())
    assert first.status_code == 201
    before = sorted(stored_files(settings))
    response = await upload(client, auth, progressive_jpeg_with_scans(20_000))
    assert_problem(response, 422, "image_too_complex")
    assert sorted(stored_files(settings)) == before
    kept = await client.get("/users/me/avatar", headers=auth())
    assert kept.json()["avatar_url"] == first.json()["avatar_url"]


async def test_a_job_past_its_deadline_is_422_and_changes_nothing(tmp_path, sqlite_url) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, image_job_timeout=0.001)
    async with running_app(settings) as (client, auth):
        response = await upload(client, auth, jpeg_with_metadata((2000, 1500)))
        assert_problem(response, 422, "image_too_complex")
        assert "longer than 0.001 s" in response.json()["detail"]
        assert stored_files(settings) == []
        assert (await client.get("/users/me/avatar", headers=auth())).status_code == 404


def test_report_columns_migrate_up_and_down(tmp_path) -> None:
    import sqlite3

    from app.db.migrate import downgrade, upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0001")
    with sqlite3.connect(tmp_path / "m.db") as db:
        db.execute(
            "INSERT INTO avatars VALUES ('u', 'v', 1, 1, 'JPEG', '[]', '2026-01-01', '2026-01-01')"
        )
    upgrade(url, "0002")
    with sqlite3.connect(tmp_path / "m.db") as db:
        row = db.execute("SELECT metadata_removed, orientation_applied FROM avatars").fetchone()
    assert row == ("[]", 1)
    downgrade(url, "0001")
    with sqlite3.connect(tmp_path / "m.db") as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(avatars)")}
    assert "metadata_removed" not in columns and "orientation_applied" not in columns
