"""The avatar document, base64 both ways, Gravatar-style URLs, constraints, re-cropping, CORS."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.client import assert_problem, upload
from tests.conftest import make_settings, running_app, stored_files
from tests.images import assert_clean_webp, encode, jpeg_with_metadata


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def test_document_has_variants_srcset_placeholder_and_version(client, auth) -> None:
    response = await upload(client, auth, jpeg_with_metadata((900, 600), color=(200, 40, 40)))
    assert response.status_code == 201
    doc = response.json()
    names = {v["name"] for v in doc["variants"]}
    assert {"original", "thumb", "thumb-256", "thumb-128", "thumb-64"} <= names
    for variant in doc["variants"]:
        assert set(variant) >= {"url", "width", "height", "bytes", "content_type"}
    entries = [entry.rsplit(" ", 1) for entry in doc["srcset"].split(", ")]
    assert [int(width[:-1]) for _url, width in entries] == [64, 128, 256, 400]
    for url, width in entries:
        fetched = await client.get(url)
        assert decoded(fetched.content).width == int(width[:-1])
    placeholder = doc["placeholder"]
    assert len(placeholder["blurhash"]) == 36  # 4x4 components
    red, green, blue = (int(placeholder["dominant_color"][i : i + 2], 16) for i in (1, 3, 5))
    assert red > 150 and green < 100 and blue < 100
    assert doc["version"] and doc["updated_at"]

    again = (await upload(client, auth, jpeg_with_metadata((900, 600)))).json()
    assert again["version"] != doc["version"]


async def test_document_etag_and_304(client, auth) -> None:
    created = await upload(client, auth, jpeg_with_metadata())
    for path, headers in (("/users/me/avatar", auth()), ("/users/alice/avatar", {})):
        first = await client.get(path, headers=headers)
        etag = first.headers["etag"]
        assert first.headers["cache-control"].endswith("no-cache")
        cached = await client.get(path, headers={**headers, "If-None-Match": etag})
        assert cached.status_code == 304
        assert cached.content == b""
        assert cached.headers["etag"] == etag
    assert created.headers["etag"]
    await upload(client, auth, jpeg_with_metadata(color=(1, 2, 3)))
    changed = await client.get("/users/alice/avatar", headers={"If-None-Match": etag})
    assert changed.status_code == 200


async def test_inline_data_uri(client, auth) -> None:
    await upload(client, auth, jpeg_with_metadata())
    doc = (await client.get("/users/alice/avatar", params={"inline": "thumb-64"})).json()
    inline = doc["inline"]
    assert inline["variant"] == "thumb-64"
    prefix = "data:image/webp;base64,"
    assert inline["data_uri"].startswith(prefix)
    data = base64.b64decode(inline["data_uri"][len(prefix) :])
    assert decoded(data).size == (64, 64)
    assert_clean_webp(data)
    assert (await client.get("/users/alice/avatar")).json()["inline"] is None
    assert_problem(
        await client.get("/users/alice/avatar", params={"inline": "nope"}), 422, "unknown_variant"
    )


async def test_inline_above_the_cap_is_refused(tmp_path, sqlite_url) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, inline_max_bytes=500)
    async with running_app(settings) as (client, auth):
        noise = Image.effect_noise((400, 400), 90).convert("RGB")  # a thumb of many KB
        await upload(client, auth, encode(noise, "JPEG", quality=95))
        response = await client.get("/users/me/avatar", headers=auth(), params={"inline": "thumb"})
        assert_problem(response, 422, "inline_too_large")


@pytest.mark.parametrize("form", ["plain", "data-uri", "urlsafe-with-newlines"])
async def test_json_base64_upload(client, auth, settings, form: str) -> None:
    data = jpeg_with_metadata((300, 200))
    text = base64.b64encode(data).decode()
    if form == "data-uri":
        text = "data:image/jpeg;base64," + text
    elif form == "urlsafe-with-newlines":
        safe = base64.urlsafe_b64encode(data).decode().rstrip("=")
        text = "\n".join(safe[i : i + 76] for i in range(0, len(safe), 76))
    response = await client.post(
        "/users/me/avatar", headers=auth(), json={"image_base64": text, "filename": "me.jpg"}
    )
    assert response.status_code == 201, response.text
    doc = response.json()
    assert (doc["width"], doc["height"]) == (300, 200)
    assert "exif.gps" in doc["metadata_removed"]


@pytest.mark.parametrize(
    ("value", "status", "code"),
    [
        ("not base64 at all!", 422, "invalid_base64"),
        ("data:image/png,rawdata", 422, "invalid_base64"),
        ("QUJD=", 422, "invalid_base64"),
        (base64.b64encode(b"plain text").decode(), 415, "unsupported_format"),
    ],
)
async def test_json_base64_errors(client, auth, settings, value, status, code) -> None:
    response = await client.post("/users/me/avatar", headers=auth(), json={"image_base64": value})
    assert_problem(response, status, code)
    assert stored_files(settings) == []


async def test_json_upload_missing_field_and_bad_json(client, auth) -> None:
    response = await client.post("/users/me/avatar", headers=auth(), json={"file": "x"})
    assert_problem(response, 422, "missing_file")
    response = await client.post(
        "/users/me/avatar",
        headers={**auth(), "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert_problem(response, 422, "invalid_request")


async def test_base64_length_is_checked_before_decoding(tmp_path, sqlite_url) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, max_upload_bytes=3000)
    async with running_app(settings) as (client, auth):
        too_long = "A" * 6000  # valid base64 of 4500 bytes: refused from its length
        response = await client.post(
            "/users/me/avatar", headers=auth(), json={"image_base64": too_long}
        )
        assert_problem(response, 413, "image_too_large")


async def test_gravatar_style_url_picks_the_size(client, auth, app) -> None:
    await upload(client, auth, jpeg_with_metadata((900, 600)))
    redirects = app.state.runtime.storage.object_url("avatars/x/thumb.webp") is not None  # S3
    webp = {"Accept": "image/webp,*/*"}
    # The smallest ladder side at least the size asked, never above the 600 px square.
    for wanted, side in ((1, 16), (64, 64), (65, 96), (200, 256), (400, 400), (2000, 600)):
        response = await client.get("/avatars/alice", params={"size": wanted}, headers=webp)
        assert response.status_code == (302 if redirects else 200), (wanted, response.text)
        assert response.headers["cache-control"] == "public, max-age=300"
        assert response.headers["vary"] == "Accept, Sec-CH-Prefers-Reduced-Motion"
        if redirects:
            response = await client.get(response.headers["location"])
        assert response.headers["content-type"] == "image/webp"
        assert decoded(response.content).size == (side, side), wanted
        if not redirects:
            etag = response.headers["etag"]
            again = await client.get(
                "/avatars/alice",
                params={"size": wanted},
                headers={**webp, "If-None-Match": etag},
            )
            assert again.status_code == 304
    default_size = await client.get("/avatars/alice", headers=webp, follow_redirects=True)
    assert decoded(default_size.content).size == (96, 96)  # 80 px wanted, as Gravatar


@pytest.mark.parametrize("style", ["initials", "identicon", "mp"])
async def test_defaults_for_users_without_avatar(client, style: str) -> None:
    params = {"default": style, "size": 96, "format": "webp"}
    first = await client.get("/avatars/nobody.here", params=params)
    second = await client.get("/avatars/nobody.here", params=params)
    other = await client.get("/avatars/someone-else", params=params)
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/webp"
    assert first.headers["cache-control"] == "public, max-age=300"
    assert decoded(first.content).size == (96, 96)
    assert first.content == second.content  # deterministic
    if style != "mp":
        assert first.content != other.content  # per user
    assert_clean_webp(first.content)


async def test_default_404_and_bad_parameters(client) -> None:
    assert_problem(await client.get("/avatars/nobody"), 404, "avatar_not_found")
    assert_problem(
        await client.get("/avatars/nobody", params={"default": "404"}), 404, "avatar_not_found"
    )
    assert_problem(await client.get("/avatars/x", params={"size": 0}), 422, "invalid_request")
    assert_problem(
        await client.get("/avatars/x", params={"default": "retro"}), 422, "invalid_request"
    )


async def test_storage_that_serves_objects_gets_a_redirect(client, auth, app) -> None:
    await upload(client, auth, jpeg_with_metadata())
    storage = app.state.runtime.storage.inner
    if storage.object_url("avatars/x/thumb.webp") is None:
        # As S3 would: the objects are fetched from the store (here at the service's /media/).
        storage.object_url = lambda key: f"http://testserver/media/{key}"
    response = await client.get("/avatars/alice", params={"size": 100, "format": "webp"})
    assert response.status_code == 302
    assert response.headers["cache-control"] == "public, max-age=300"
    target = await client.get(response.headers["location"])
    assert decoded(target.content).size == (128, 128)


async def test_constraints(client, settings) -> None:
    response = await client.get("/avatar/constraints")
    assert response.status_code == 200
    body = response.json()
    assert body["max_upload_bytes"] == settings.max_upload_bytes
    assert body["max_dimension"] == settings.max_dimension
    assert body["max_pixels"] == settings.max_pixels
    assert body["formats"] == ["JPEG", "PNG", "GIF", "WEBP"]
    assert body["sizes"] == [400, 256, 128, 64]
    assert body["size_ladder"] == [16, 24, 32, 48, 64, 96, 128, 192, 256, 400, 512, 1024]
    assert body["rendition_content_types"] == [
        "image/avif",
        "image/webp",
        "image/jpeg",
        "image/png",
    ]
    assert body["animation"]["max_frames"] == settings.max_frames
    codes = {error["code"] for error in body["error_codes"]}
    assert {
        "unsupported_format",
        "too_many_pixels",
        "corrupt_image",
        "invalid_base64",
        "invalid_crop",
        "not_authenticated",
        "rate_limited",
    } <= codes


async def test_patch_crop_rederives_sizes_from_the_stored_original(client, auth, settings) -> None:
    image = Image.new("RGB", (600, 300), (0, 0, 255))
    image.paste((255, 0, 0), (400, 0, 600, 200))  # a red block at the top right
    created = (await upload(client, auth, encode(image, "PNG"))).json()
    centre = decoded((await client.get(created["avatar_thumb_url"])).content).convert("RGB")
    assert centre.getpixel((100, 100))[2] > 200  # the centre square is blue

    response = await client.patch(
        "/users/me/avatar", headers=auth(), json={"crop": "400,0,200,200"}
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["crop"] == [400, 0, 200, 200]
    assert patched["crop_source"] == "client"
    assert patched["version"] != created["version"]
    assert patched["avatar_url"] == created["avatar_url"]  # the original is kept
    thumb = decoded((await client.get(patched["avatar_thumb_url"])).content).convert("RGB")
    assert thumb.size == (200, 200)
    assert thumb.getpixel((100, 100))[0] > 200  # now the red block
    assert (await client.get(created["avatar_thumb_url"])).status_code == 404  # old squares gone
    assert len(stored_files(settings)) == len(patched["variants"])

    back = (await client.patch("/users/me/avatar", headers=auth(), json={"crop": None})).json()
    assert back["crop"] == [150, 0, 300, 300]  # the centre square of the 600x300 original
    assert back["crop_source"] == "client"
    thumb = decoded((await client.get(back["avatar_thumb_url"])).content).convert("RGB")
    assert thumb.getpixel((100, 100))[2] > 200  # the centre again: the crop can be undone


async def test_patch_errors(client, auth) -> None:
    assert_problem(
        await client.patch("/users/me/avatar", headers=auth(), json={"crop": "0,0,10,10"}),
        404,
        "avatar_not_found",
    )
    await upload(client, auth, jpeg_with_metadata((300, 200)))
    before = (await client.get("/users/me/avatar", headers=auth())).json()
    for crop in ("250,0,100,100", "a,b,c,d", [1, 2, 3]):
        response = await client.patch("/users/me/avatar", headers=auth(), json={"crop": crop})
        assert_problem(response, 422, "invalid_crop")
    assert (await client.get("/users/me/avatar", headers=auth())).json() == before
    assert_problem(
        await client.patch("/users/me/avatar", json={"crop": None}), 401, "not_authenticated"
    )


async def test_cors_for_configured_origins(tmp_path, sqlite_url) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, cors_origins=["https://app.example.test"]
    )
    async with running_app(settings) as (client, _auth):
        preflight = await client.options(
            "/users/me/avatar",
            headers={
                "Origin": "https://app.example.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.test"
        simple = await client.get("/healthz", headers={"Origin": "https://app.example.test"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example.test"
        assert "etag" in simple.headers["access-control-expose-headers"].lower()
        other = await client.get("/healthz", headers={"Origin": "https://evil.example.test"})
        assert "access-control-allow-origin" not in other.headers


async def test_openapi_describes_delivery_routes(client) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert "application/json" in paths["/users/me/avatar"]["post"]["requestBody"]["content"]
    assert "patch" in paths["/users/me/avatar"]
    assert "/avatars/{user_id}" in paths and "/avatar/constraints" in paths
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation.get("summary"), (path, method)
            assert operation.get("responses"), (path, method)
