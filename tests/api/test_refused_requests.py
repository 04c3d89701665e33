"""A request the service refuses changes nothing, and a change it made is never answered with
an error: parameters are checked before the work; what can only be known after the commit
(an inline image's size) is left out of a 2xx answer instead of turning it into a 4xx.

Every body that carries JSON is bounded (size, time, nesting) and read only after the token."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.bodies import CountingBody, TrickledBody
from tests.client import assert_problem, files
from tests.conftest import make_settings, running_app, stored_files
from tests.images import encode, jpeg_with_metadata

DEEP_JSON = b"[" * 100_000


async def snapshot(client, settings) -> tuple[dict, list]:
    return (await client.get("/users/alice/avatar")).json(), stored_files(settings)


@pytest.mark.parametrize("inline", ["nope", "thumb-999", "", "x" * 64])
async def test_upload_with_an_unknown_inline_variant_changes_nothing(
    client, auth, settings, inline: str
) -> None:
    assert (
        await client.post("/users/me/avatar", headers=auth(), files=files(jpeg_with_metadata()))
    ).status_code == 201
    before = await snapshot(client, settings)
    response = await client.post(
        "/users/me/avatar",
        headers=auth(),
        params={"inline": inline},
        files=files(jpeg_with_metadata(color=(1, 2, 3))),
    )
    assert_problem(response, 422, "unknown_variant")
    assert await snapshot(client, settings) == before


async def test_upload_with_a_too_large_inline_image_is_stored_and_says_what_was_left_out(
    tmp_path, sqlite_url
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, inline_max_bytes=500)
    async with running_app(settings) as (client, auth):
        noise = encode(Image.effect_noise((400, 400), 90).convert("RGB"), "JPEG", quality=95)
        for inline in ("original", "still"):  # over the cap; a still image has no "still"
            response = await client.post(
                "/users/me/avatar", headers=auth(), params={"inline": inline}, files=files(noise)
            )
            assert response.status_code == 201, response.text
            document = response.json()
            assert document["inline"] is None
            expected = "inline_too_large" if inline == "original" else "unknown_variant"
            assert document["inline_omitted"].startswith(expected + ": ")
            stored = (await client.get("/users/alice/avatar")).json()
            assert stored["version"] == document["version"]
            assert len(stored_files(settings)) == len(document["variants"])
        fits = await client.post(
            "/users/me/avatar",
            headers=auth(),
            params={"inline": "thumb-64"},
            files=files(jpeg_with_metadata(color=(9, 9, 9))),
        )
        assert fits.json()["inline"]["variant"] == "thumb-64"
        assert fits.json()["inline_omitted"] is None


async def test_anonymous_patch_is_refused_before_the_body_is_read(client) -> None:
    body = CountingBody(64, head=b'{"crop": "')
    response = await client.patch(
        "/users/me/avatar", content=body, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 401, "not_authenticated")
    assert body.consumed <= 65536, f"{body.consumed} bytes were read before the 401"


async def test_patch_body_is_bounded_in_size_and_type(client, auth, settings) -> None:
    await client.post("/users/me/avatar", headers=auth(), files=files(jpeg_with_metadata()))
    before = await snapshot(client, settings)
    body = CountingBody(64, head=b'{"crop": "')
    headers = {**auth(), "Content-Type": "application/json"}
    response = await client.patch("/users/me/avatar", content=body, headers=headers)
    assert_problem(response, 413, "image_too_large")
    assert body.consumed <= 65536
    declared = {**headers, "Content-Length": str(10**9)}
    response = await client.patch("/users/me/avatar", content=b"{}", headers=declared)
    assert_problem(response, 413, "image_too_large")
    response = await client.patch(
        "/users/me/avatar", content=b"crop=1,2,3,4", headers={**auth(), "Content-Type": "text/x"}
    )
    assert_problem(response, 415, "unsupported_content_type")
    for bad in (b"{not json", b"[]", b'{"crop": {"x": 1}}', b"{}"):
        response = await client.patch("/users/me/avatar", content=bad, headers=headers)
        assert_problem(response, 422, "invalid_request")
    assert await snapshot(client, settings) == before


async def test_a_trickled_patch_body_is_cut_off_with_408(tmp_path, sqlite_url) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, body_idle_timeout=0.3, body_timeout=1.0
    )
    async with running_app(settings) as (client, auth):
        body = TrickledBody(b'{"crop": ', b" ")
        headers = {**auth(), "Content-Type": "application/json"}
        response = await client.patch("/users/me/avatar", content=body, headers=headers)
        assert_problem(response, 408, "request_timeout")
        assert body.sent < 40


async def test_patch_over_the_rate_limit_is_429_before_the_body(tmp_path, sqlite_url) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, rate_limit="1/minute")
    async with running_app(settings) as (client, auth):
        assert (
            await client.post("/users/me/avatar", headers=auth(), files=files(jpeg_with_metadata()))
        ).status_code == 201
        body = CountingBody(64, head=b'{"crop": "')
        headers = {**auth(), "Content-Type": "application/json"}
        response = await client.patch("/users/me/avatar", content=body, headers=headers)
        assert_problem(response, 429, "rate_limited")
        assert body.consumed <= 65536


async def test_deeply_nested_json_is_a_422_on_every_json_body(client, auth, settings) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    # Deeper than Python's recursion limit; the PATCH one also within its 4096-byte cap.
    for method, body in (("POST", DEEP_JSON), ("PATCH", b"[" * 4000)):
        response = await client.request(method, "/users/me/avatar", content=body, headers=headers)
        assert_problem(response, 422, "invalid_request")
        assert "nested" in response.json()["detail"]
    nested_field = b'{"image_base64": "x", "filename": ' + DEEP_JSON + b"}"
    response = await client.post("/users/me/avatar", content=nested_field, headers=headers)
    assert_problem(response, 422, "invalid_request")
    assert stored_files(settings) == []


async def test_no_json_body_route_answers_deep_nesting_with_a_5xx(client, auth) -> None:
    """Every operation the OpenAPI document says takes JSON, whoever parses its body."""
    schema = (await client.get("/openapi.json")).json()
    tried = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content or "{" in path:
                continue
            response = await client.request(
                method,
                path,
                content=DEEP_JSON,
                headers={**auth(), "Content-Type": "application/json"},
            )
            assert 400 <= response.status_code < 500, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            tried.append((method, path))
    assert ("post", "/users/me/avatar") in tried and ("patch", "/users/me/avatar") in tried


async def test_an_oversized_authorization_header_is_refused_before_it_is_parsed(
    app, client, auth
) -> None:
    from app.api.deps import MAX_AUTHORIZATION_BYTES

    verified = []
    verifier = app.state.runtime.verifier
    real_verify = verifier.verify
    verifier.verify = lambda token: verified.append(len(token)) or real_verify(token)
    assert (await client.get("/users/me/avatar", headers=auth())).status_code == 404
    assert verified, "the spy is not in the path"
    verified.clear()
    padded = {"Authorization": auth()["Authorization"] + "x" * MAX_AUTHORIZATION_BYTES}
    for method in ("GET", "POST", "PATCH", "DELETE"):
        response = await client.request(method, "/users/me/avatar", headers=padded)
        assert_problem(response, 401, "not_authenticated")
    assert verified == []
