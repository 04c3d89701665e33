"""Every client gets a picture it can show: the format by Accept (or ?format=), any size from the
ladder, still or moving, derived once on first request and stored under the version's keys.
Runs on local storage and on S3 (where the unversioned URL redirects)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess

import httpx
import pytest
from PIL import Image

from tests.client import assert_problem, files, metric_value, upload
from tests.conftest import make_settings, missing, running_app, stored_files
from tests.images import assert_clean_image, encode, jpeg_with_metadata

AVIF, WEBP, JPEG, PNG = "image/avif", "image/webp", "image/jpeg", "image/png"
BROWSER_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
SECRETS = (b"SecretCameraMaker", b"secret-xmp", b"secret-comment")


async def fetch(client: httpx.AsyncClient, url: str, **request) -> httpx.Response:
    """The image behind ``url``: followed through a redirect to the store (S3)."""
    response = await client.get(url, **request)
    if response.status_code == 302:
        response = await client.get(response.headers["location"])
    return response


def opened(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def stored_names(settings) -> list[str]:
    """The file names (``avif-48.avif``) of every stored object, on disk or in the bucket."""
    return sorted(
        (obj.key if hasattr(obj, "key") else obj.name).rsplit("/", 1)[-1]
        for obj in stored_files(settings)
    )


def transparent_png() -> bytes:
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    image.paste((30, 120, 200, 255), (50, 50, 150, 150))
    return encode(image, "PNG")


def animated_gif(frames: int = 4, size: int = 160) -> bytes:
    pictures = [Image.new("RGB", (size, size), (40 * i, 200 - 40 * i, 90)) for i in range(frames)]
    return encode(pictures[0], "GIF", save_all=True, append_images=pictures[1:], duration=120)


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (BROWSER_ACCEPT, AVIF),
        ("image/webp,*/*", WEBP),
        ("image/avif;q=0,image/webp", WEBP),
        ("*/*", JPEG),  # names neither: the e-mail-safe format
        ("image/jpeg", JPEG),
        ("", JPEG),
    ],
)
async def test_accept_picks_the_format(client, auth, accept: str, content_type: str) -> None:
    await upload(client, auth, jpeg_with_metadata((480, 360)))
    response = await client.get("/avatars/alice", params={"size": 100}, headers={"Accept": accept})
    assert response.headers["vary"] == "Accept, Sec-CH-Prefers-Reduced-Motion"
    assert response.headers["accept-ch"] == "Sec-CH-Prefers-Reduced-Motion"
    assert response.headers["cache-control"] == "public, max-age=300"
    image = await fetch(client, "/avatars/alice", params={"size": 100}, headers={"Accept": accept})
    assert image.headers["content-type"] == content_type
    assert opened(image).size == (128, 128)
    assert_clean_image(image.content, content_type, markers=SECRETS)


async def test_format_parameter_wins_over_accept(client, auth) -> None:
    await upload(client, auth, jpeg_with_metadata((300, 300)))
    for name, content_type in (("avif", AVIF), ("webp", WEBP), ("jpeg", JPEG), ("png", PNG)):
        params = {"size": 40, "format": name}
        response = await fetch(client, "/avatars/alice", params=params, headers={"Accept": "*/*"})
        assert response.headers["content-type"] == content_type
        assert opened(response).size == (48, 48)
        assert_clean_image(response.content, content_type, markers=SECRETS)
    bad = await client.get("/avatars/alice", params={"format": "gif"})
    assert_problem(bad, 422, "invalid_request")


async def test_sizes_come_from_the_ladder_and_are_never_upscaled(client, auth) -> None:
    await upload(client, auth, jpeg_with_metadata((150, 150)))
    avif = {"Accept": "image/avif"}
    for wanted, side in ((1, 16), (17, 24), (100, 128), (129, 150), (4096, 150)):
        response = await fetch(client, "/avatars/alice", params={"size": wanted}, headers=avif)
        assert opened(response).size == (side, side), wanted
    document = (await client.get("/users/alice/avatar")).json()
    assert_problem(
        await client.get("/avatars/alice", params={"size": 4097}), 422, "invalid_request"
    )
    assert document == (await client.get("/users/alice/avatar")).json()  # renditions: no change


async def test_transparent_pictures_get_png_or_jpeg_on_the_background(tmp_path, database_url):
    settings = make_settings(tmp_path, database_url=database_url, jpeg_background="#00ff00")
    async with running_app(settings) as (client, auth):
        response = await client.post(
            "/users/me/avatar", headers=auth(), files=files(transparent_png(), "a.png", PNG)
        )
        assert response.status_code == 201, response.text
        plain = await fetch(client, "/avatars/alice", params={"size": 64})
        assert plain.headers["content-type"] == PNG
        assert opened(plain).mode == "RGBA"
        assert opened(plain).getpixel((2, 2))[3] == 0  # transparency kept
        jpeg = await fetch(client, "/avatars/alice", params={"size": 64, "format": "jpeg"})
        red, green, blue = opened(jpeg).convert("RGB").getpixel((2, 2))
        assert red < 20 and green > 235 and blue < 20  # laid on the configured background
        assert_clean_image(jpeg.content, JPEG)


async def test_concurrent_first_requests_derive_once(client, auth, app, settings) -> None:
    await upload(client, auth, jpeg_with_metadata((640, 480)))
    before = stored_names(settings)
    params = {"size": 44, "format": "avif"}
    answers = await asyncio.gather(
        *(fetch(client, "/avatars/alice", params=params) for _ in range(20))
    )
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.content for answer in answers}) == 1
    await app.state.runtime.renditions.drain()
    metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "avatar_renditions_derived_total", format="avif") == 1
    assert sorted(set(stored_names(settings)) - set(before)) == ["avif-48.avif"]
    again = await fetch(client, "/avatars/alice", params=params)
    assert again.content == answers[0].content
    metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "avatar_renditions_derived_total", format="avif") == 1


async def test_a_flood_of_sizes_gets_503_and_leaves_nothing_half_made(tmp_path, database_url):
    settings = make_settings(tmp_path, database_url=database_url, workers=1, queue_size=0)
    async with running_app(settings) as (client, auth):
        assert (await upload(client, auth, jpeg_with_metadata((1200, 1200)))).status_code == 201
        before = stored_names(settings)
        sizes = (16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
        answers = await asyncio.gather(
            *(
                client.get("/avatars/alice", params={"size": size, "format": "avif"})
                for size in sizes
            )
        )
        busy = [answer for answer in answers if answer.status_code == 503]
        assert busy, [answer.status_code for answer in answers]
        for answer in busy:
            assert_problem(answer, 503, "server_busy")
            assert answer.headers["retry-after"]
        served = [
            size for size, answer in zip(sizes, answers, strict=True) if answer.status_code < 400
        ]
        assert len(served) + len(busy) == len(sizes)
        added = sorted(set(stored_names(settings)) - set(before))
        assert added == sorted(f"avif-{size}.avif" for size in served)


async def test_animations_move_in_avif_and_webp_and_stand_still_when_asked(client, auth) -> None:
    response = await client.post(
        "/users/me/avatar", headers=auth(), files=files(animated_gif(), "a.gif", "image/gif")
    )
    assert response.status_code == 201, response.text
    document = response.json()
    assert document["animated"]
    reduce = "(prefers-reduced-motion: reduce)"
    kinds = [(source["type"], source["media"]) for source in document["sources"]]
    assert kinds == [(AVIF, reduce), (WEBP, reduce), (AVIF, None), (WEBP, None), (JPEG, None)]
    assert "/avif-still-64.avif 64w" in document["sources"][0]["srcset"]

    def frames(answer: httpx.Response) -> int:
        return getattr(opened(answer), "n_frames", 1)

    moving = {"Accept": BROWSER_ACCEPT}
    assert frames(await fetch(client, "/avatars/alice", params={"size": 64}, headers=moving)) == 4
    webp = {"Accept": "image/webp"}
    assert frames(await fetch(client, "/avatars/alice", params={"size": 64}, headers=webp)) == 4
    reduced = {**moving, "Sec-CH-Prefers-Reduced-Motion": "reduce"}
    still = await fetch(client, "/avatars/alice", params={"size": 64}, headers=reduced)
    assert still.headers["content-type"] == AVIF and frames(still) == 1
    asked = await fetch(client, "/avatars/alice", params={"size": 64, "animate": 0}, headers=webp)
    assert asked.headers["content-type"] == WEBP and frames(asked) == 1
    for name in ("jpeg", "png"):
        answer = await fetch(client, "/avatars/alice", params={"size": 64, "format": name})
        assert frames(answer) == 1
        assert_clean_image(answer.content, f"image/{name}")
    for source in document["sources"]:  # every source of the <picture>, as a browser reads it
        url = source["srcset"].split(", ")[0].split(" ")[0]
        moving = 1 if source["media"] or source["type"] == JPEG else 4
        assert frames(await fetch(client, url)) == moving, source


@pytest.mark.parametrize("style", ["initials", "identicon", "mp"])
async def test_generated_defaults_exist_in_every_format(client, style: str) -> None:
    for name, content_type in (("avif", AVIF), ("webp", WEBP), ("jpeg", JPEG), ("png", PNG)):
        params = {"default": style, "size": 60, "format": name}
        response = await client.get("/avatars/nobody.here", params=params)
        assert response.headers["content-type"] == content_type
        assert opened(response).size == (64, 64)
        assert_clean_image(response.content, content_type)
    negotiated = await client.get("/avatars/nobody.here", params={"default": style})
    assert negotiated.headers["content-type"] == JPEG  # "*/*" names no format
    assert negotiated.headers["vary"] == "Accept, Sec-CH-Prefers-Reduced-Motion"


async def test_the_document_offers_picture_sources(client, auth) -> None:
    created = (await upload(client, auth, jpeg_with_metadata((500, 400)))).json()
    sources = created["sources"]
    assert [source["type"] for source in sources] == [AVIF, WEBP, JPEG]
    assert all(source["media"] is None for source in sources)
    for source in sources:
        entries = [entry.rsplit(" ", 1) for entry in source["srcset"].split(", ")]
        assert [width for _url, width in entries] == ["64w", "128w", "256w", "400w"]
        for url, width in entries:
            image = await fetch(client, url)
            assert image.headers["content-type"] == source["type"]
            if source["type"] != WEBP:
                assert image.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert opened(image).size == (int(width[:-1]),) * 2
            assert_clean_image(image.content, source["type"], markers=SECRETS)
    # Made on first request: the document (and its ETag) stays the same.
    assert (await client.get("/users/alice/avatar")).json()["sources"] == sources


async def test_rendition_urls_name_one_version(client, auth) -> None:
    first = (await upload(client, auth, jpeg_with_metadata((300, 300)))).json()
    url = first["sources"][0]["srcset"].split(" ", 1)[0]
    assert url.endswith(f"/avatars/alice/{first['version']}/avif-64.avif")
    path = url.split("testserver", 1)[-1]
    for wrong in ("avif-64.webp", "avif-65.avif", "gif-64.gif", "avif-still-64.avif", "x"):
        answer = await client.get(path.rsplit("/", 1)[0] + "/" + wrong)
        assert_problem(answer, 404, "not_found")
    assert (await fetch(client, path)).status_code == 200
    await upload(client, auth, jpeg_with_metadata((300, 300), color=(10, 10, 200)))
    assert_problem(await client.get(path), 404, "not_found")  # a replaced version


async def test_delete_and_replace_remove_every_derived_object(client, auth, app, settings) -> None:
    await upload(client, auth, jpeg_with_metadata((400, 400)))
    for name in ("avif", "jpeg", "png", "webp"):
        await fetch(client, "/avatars/alice", params={"size": 30, "format": name})
    await app.state.runtime.renditions.drain()
    names = stored_names(settings)
    assert {"avif-32.avif", "jpeg-32.jpg", "png-32.png", "webp-32.webp"} <= set(names)
    await upload(client, auth, jpeg_with_metadata((400, 400), color=(0, 90, 0)))
    assert not {name for name in stored_names(settings) if name[0] in "ajpw" and "-" in name}
    await fetch(client, "/avatars/alice", params={"size": 30, "format": "avif"})
    await app.state.runtime.renditions.drain()
    assert (await client.delete("/users/me/avatar", headers=auth())).status_code == 204
    assert stored_files(settings) == []


def exiftool_tags(data: bytes, tmp_path) -> dict[str, object]:
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        missing("exiftool is not installed (make install-exiftool)")
    path = tmp_path / "avatar.jpg"
    path.write_bytes(data)
    result = subprocess.run(
        [str(exiftool), "-json", "-a", "-u", "-G1", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (tags,) = json.loads(result.stdout)
    return tags


@pytest.mark.server
async def test_a_jpeg_client_gets_a_jpeg_pillow_and_exiftool_find_clean(
    client, auth, tmp_path
) -> None:
    await upload(client, auth, jpeg_with_metadata((640, 480), gps=True))
    response = await fetch(client, "/avatars/alice", headers={"Accept": "image/jpeg"})
    assert response.headers["content-type"] == JPEG
    assert_clean_image(response.content, JPEG, markers=SECRETS)
    tags = exiftool_tags(response.content, tmp_path)
    groups = {key.split(":", 1)[0] for key in tags if ":" in key}
    # The file system, exiftool itself, the JFIF density and what it computes: nothing more.
    assert groups <= {"ExifTool", "System", "File", "JFIF", "Composite"}, groups
    assert "File:Comment" not in tags
    assert tags["File:ColorComponents"] == 3  # plain YCbCr from sRGB pixels
    # The check can fail: the upload itself is full of what must go.
    original = exiftool_tags(jpeg_with_metadata((64, 64), gps=True), tmp_path)
    assert any(key.startswith(("GPS:", "XMP")) for key in original)
