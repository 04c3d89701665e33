from __future__ import annotations

import io

import pytest
from PIL import Image

from app.core.config import Settings
from app.core.security import create_token
from tests.bodies import CountingBody, TrickledBody
from tests.client import PROBLEM, assert_problem, files, upload
from tests.conftest import stored_files
from tests.images import assert_clean_webp, encode, jpeg_with_metadata, png_with_declared_size


async def test_upload_returns_document_with_urls(client, auth, settings: Settings) -> None:
    response = await upload(client, auth, jpeg_with_metadata((800, 600)))
    assert response.status_code == 201, response.text
    body = response.json()
    for field in (
        "avatar_url",
        "avatar_thumb_url",
        "width",
        "height",
        "content_type",
        "bytes",
        "updated_at",
    ):
        assert field in body
    assert (body["width"], body["height"]) == (800, 600)
    assert body["content_type"] == "image/webp"
    assert body["avatar_url"].startswith("http://testserver/media/avatars/")
    assert body["user_id"] == "alice"
    assert len(stored_files(settings)) == len(body["variants"])


async def test_uploaded_images_can_be_fetched_and_are_clean(client, auth) -> None:
    body = (await upload(client, auth, jpeg_with_metadata(orientation=6))).json()
    original = await client.get(body["avatar_url"])
    thumb = await client.get(body["avatar_thumb_url"])
    assert original.status_code == thumb.status_code == 200
    assert original.headers["content-type"] == "image/webp"
    assert len(original.content) == body["bytes"]
    for response in (original, thumb):
        assert_clean_webp(response.content, markers=(b"SecretCameraMaker", b"secret-xmp"))
    assert Image.open(io.BytesIO(original.content)).size == (480, 640)  # rotated upright
    assert Image.open(io.BytesIO(thumb.content)).size == (400, 400)


async def test_get_my_avatar_and_public_avatar(client, auth) -> None:
    created = (await upload(client, auth, jpeg_with_metadata())).json()
    mine = await client.get("/users/me/avatar", headers=auth())
    public = await client.get("/users/alice/avatar")
    assert mine.status_code == public.status_code == 200
    assert mine.json() == public.json() == created


async def test_missing_avatar_is_404(client, auth) -> None:
    assert_problem(await client.get("/users/me/avatar", headers=auth()), 404, "avatar_not_found")
    assert_problem(await client.get("/users/nobody/avatar"), 404, "avatar_not_found")
    assert_problem(await client.delete("/users/me/avatar", headers=auth()), 404, "avatar_not_found")


async def test_new_upload_replaces_the_previous_one(client, auth, settings) -> None:
    first = (await upload(client, auth, jpeg_with_metadata(color=(255, 0, 0)))).json()
    second = (await upload(client, auth, jpeg_with_metadata(color=(0, 0, 255)))).json()
    assert first["avatar_url"] != second["avatar_url"]
    assert (await client.get(first["avatar_url"])).status_code == 404
    assert (await client.get(second["avatar_url"])).status_code == 200
    assert len(stored_files(settings)) == len(second["variants"])


async def test_delete_removes_row_and_files(client, auth, settings) -> None:
    body = (await upload(client, auth, jpeg_with_metadata())).json()
    response = await client.delete("/users/me/avatar", headers=auth())
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(body["avatar_url"])).status_code == 404
    assert (await client.get("/users/alice/avatar")).status_code == 404
    assert stored_files(settings) == []


async def test_users_are_isolated(client, auth) -> None:
    await upload(client, auth, jpeg_with_metadata(), user="alice")
    await upload(client, auth, jpeg_with_metadata(), user="bob")
    await client.delete("/users/me/avatar", headers=auth("bob"))
    assert (await client.get("/users/alice/avatar")).status_code == 200
    assert (await client.get("/users/bob/avatar")).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic YWxpY2U6cGFzcw=="},
    ],
)
async def test_upload_without_valid_token_is_401(client, headers, settings) -> None:
    response = await client.post("/users/me/avatar", headers=headers, files=files(b"x"))
    assert_problem(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stored_files(settings) == []


async def test_expired_and_forged_tokens_are_401(client, settings) -> None:
    expired = create_token(settings, "alice", ttl_seconds=-10)
    forged_settings = settings.model_copy(update={"jwt_secret": "another-secret-" + "y" * 40})
    forged = create_token(forged_settings, "alice")
    for token in (expired, forged):
        response = await client.get(
            "/users/me/avatar", headers={"Authorization": f"Bearer {token}"}
        )
        assert_problem(response, 401, "not_authenticated")


async def test_unauthenticated_upload_is_refused_before_the_body_is_read(client) -> None:
    body = CountingBody(64)

    response = await client.post(
        "/users/me/avatar",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert_problem(response, 401, "not_authenticated")
    assert body.consumed <= 65536, f"{body.consumed} bytes were read before the 401"


async def test_declared_oversize_body_is_413_before_reading(client, auth, settings) -> None:
    body = CountingBody(200)

    headers = {
        **auth(),
        "Content-Type": "multipart/form-data; boundary=x",
        "Content-Length": str(settings.max_upload_bytes + 1024 * 1024),
    }
    response = await client.post("/users/me/avatar", content=body, headers=headers)
    assert_problem(response, 413, "image_too_large")
    assert body.consumed <= 65536
    assert stored_files(settings) == []


async def test_streamed_oversize_body_is_cut_off(client, auth, settings) -> None:
    limit = settings.max_upload_bytes
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    body = CountingBody(limit // 65536 + 64, head=head, fill=b"\xff")

    headers = {**auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = await client.post("/users/me/avatar", content=body, headers=headers)
    assert_problem(response, 413, "image_too_large")
    assert body.consumed <= limit + 2 * 65536, "the body was read past the limit"
    assert stored_files(settings) == []


async def test_file_just_over_the_limit_is_413(tmp_path, sqlite_url) -> None:
    from tests.conftest import make_settings, running_app

    settings = make_settings(tmp_path, database_url=sqlite_url, max_upload_bytes=20_000)
    async with running_app(settings) as (client, auth):
        data = jpeg_with_metadata((400, 300))
        data += b"\0" * (20_001 - len(data))
        assert_problem(await upload(client, auth, data), 413, "image_too_large")
        assert (await upload(client, auth, data[:20_000])).status_code == 201


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"plain text, not an image", 415, "unsupported_format"),
        (encode(Image.new("RGB", (8, 8)), "BMP"), 415, "unsupported_format"),
        (encode(Image.new("RGB", (8, 8)), "TIFF"), 415, "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 422, "corrupt_image"),
        (jpeg_with_metadata()[:3000], 422, "corrupt_image"),
    ],
)
async def test_bad_files_are_rejected_and_change_nothing(
    client, auth, settings, payload: bytes, status: int, code: str
) -> None:
    before = (await upload(client, auth, jpeg_with_metadata())).json()
    files_before = {path: path.read_bytes() for path in stored_files(settings)}
    response = await client.post(
        "/users/me/avatar", headers=auth(), files=files(payload, "photo.jpg", "image/jpeg")
    )
    assert_problem(response, status, code)
    assert (await client.get("/users/me/avatar", headers=auth())).json() == before
    assert {path: path.read_bytes() for path in stored_files(settings)} == files_before


async def test_decompression_bomb_is_422_too_many_pixels(client, auth, settings) -> None:
    response = await upload(client, auth, png_with_declared_size(30000, 30000))
    assert_problem(response, 422, "too_many_pixels")
    assert stored_files(settings) == []


async def test_missing_file_field_is_422(client, auth) -> None:
    response = await client.post(
        "/users/me/avatar",
        headers=auth(),
        data={"other": "x"},
        files={"not_file": ("a.jpg", b"123", "image/jpeg")},
    )
    assert_problem(response, 422, "missing_file")


async def test_non_multipart_body_is_415(client, auth) -> None:
    response = await client.post(
        "/users/me/avatar", headers={**auth(), "Content-Type": "text/plain"}, content=b"hello"
    )
    assert_problem(response, 415, "unsupported_content_type")


async def test_malformed_multipart_is_422(client, auth) -> None:
    response = await client.post(
        "/users/me/avatar",
        headers={**auth(), "Content-Type": "multipart/form-data"},
        content=b"--x\r\ngarbage",
    )
    assert response.status_code in (415, 422)
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_unknown_route_and_method_are_problems(client) -> None:
    assert_problem(await client.get("/nope"), 404, "not_found")
    assert_problem(await client.put("/healthz"), 405, "method_not_allowed")


async def test_openapi_documents_routes_and_errors(client) -> None:
    schema = (await client.get("/openapi.json")).json()
    upload_op = schema["paths"]["/users/me/avatar"]["post"]
    assert "multipart/form-data" in upload_op["requestBody"]["content"]
    for status in ("401", "413", "415", "422", "503"):
        assert status in upload_op["responses"], status
    assert "Problem" in schema["components"]["schemas"]


async def test_a_trickled_body_is_cut_off_with_408(tmp_path, sqlite_url) -> None:
    import asyncio

    from tests.conftest import make_settings, running_app

    settings = make_settings(
        tmp_path, database_url=sqlite_url, body_idle_timeout=0.3, body_timeout=1.0
    )
    async with running_app(settings) as (client, auth):
        body = TrickledBody(
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n',
            b"\xff",
        )
        headers = {**auth(), "Content-Type": "multipart/form-data; boundary=b"}
        response = await client.post("/users/me/avatar", content=body, headers=headers)
        assert_problem(response, 408, "request_timeout")
        assert body.sent < 40
        assert stored_files(settings) == []

        async def stall():
            yield b"--b\r\n"
            await asyncio.sleep(5)
            yield b"never"

        response = await client.post("/users/me/avatar", content=stall(), headers=headers)
        assert_problem(response, 408, "request_timeout")


@pytest.mark.parametrize(
    ("crop", "crop_source", "expected_crop", "expected_source"),
    [
        (None, None, [100, 0, 400, 400], "centre"),  # uploaded before crops were proposed
        ([10, 20, 300, 300], None, [10, 20, 300, 300], "client"),  # a PATCH of that time
        ([150, 0, 400, 400], "face", [150, 0, 400, 400], "face"),
    ],
)
def test_rows_from_before_the_automatic_crop_read_sensibly(
    crop, crop_source, expected_crop, expected_source
) -> None:
    from datetime import UTC, datetime

    from app.api.presenter import build_document
    from app.core.variants import VariantSet
    from app.db.models import Avatar
    from app.storage.memory import MemoryStorage

    variant = {"key": "avatars/v/original.webp", "bytes": 9, "content_type": "image/webp"}
    avatar = Avatar(
        user_id="old",
        version="v",
        width=600,
        height=400,
        source_format="JPEG",
        variants=VariantSet.from_json(
            [
                {**variant, "name": "original", "width": 600, "height": 400},
                {
                    **variant,
                    "name": "thumb",
                    "key": "avatars/v/thumb.webp",
                    "width": 400,
                    "height": 400,
                },
            ]
        ),
        crop=crop,
        crop_source=crop_source,
        updated_at=datetime.now(UTC),
    )
    document = build_document(avatar, storage=MemoryStorage(), base_url="http://x")
    assert document.crop == expected_crop
    assert document.crop_source == expected_source
