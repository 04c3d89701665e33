"""Idempotency-Key on POST, PATCH and DELETE /users/me/avatar: a retry gets the first answer
and the work is not done again; another request under the same key is refused; a retry while
the first runs is 409. On SQLite and PostgreSQL, and across two app instances (replicas)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from app.core.config import Settings
from app.main import create_app
from app.storage import build_storage
from tests.conftest import make_settings, running_app, serving, stored_files
from tests.images import jpeg_with_metadata
from tests.services.support import FaultyStorage

PHOTO = jpeg_with_metadata((320, 240), color=(200, 60, 30))
OTHER_PHOTO = jpeg_with_metadata((320, 240), color=(30, 60, 200))


def user() -> str:
    # Keys outlive avatars (the table is not emptied between tests): a user per test.
    return f"user-{uuid.uuid4().hex[:12]}"


def keyed(auth, user_id: str, key: str) -> dict[str, str]:
    return {**auth(user_id), "Idempotency-Key": f'"{key}"'}


async def post(client: httpx.AsyncClient, headers: dict[str, str], data: bytes = PHOTO):
    # httpx makes a new multipart boundary for every request, as a retrying client would.
    return await client.post(
        "/users/me/avatar", headers=headers, files={"file": ("a.jpg", data, "image/jpeg")}
    )


def assert_code(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


async def test_a_retried_upload_gets_the_first_answer_and_stores_nothing_more(
    client, auth, settings: Settings
) -> None:
    alice = user()
    headers = keyed(auth, alice, str(uuid.uuid4()))
    first = await post(client, headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    files_after_first = stored_files(settings)

    again = await post(client, headers)
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["content-type"] == "application/json"
    assert again.headers["idempotent-replayed"] == "true"
    assert stored_files(settings) == files_after_first  # no second upload was stored
    current = await client.get("/users/me/avatar", headers=auth(alice))
    assert current.json()["version"] == first.json()["version"]


async def test_the_same_key_with_another_body_is_422_and_changes_nothing(
    client, auth, settings: Settings
) -> None:
    alice = user()
    headers = keyed(auth, alice, "k-1")
    first = await post(client, headers)
    assert first.status_code == 201
    before = stored_files(settings)
    assert_code(await post(client, headers, OTHER_PHOTO), 422, "idempotency_key_mismatch")
    assert stored_files(settings) == before
    # Another method or another query is another request too.
    assert_code(
        await client.delete("/users/me/avatar", headers=headers), 422, "idempotency_key_mismatch"
    )
    assert_code(
        await client.post(
            "/users/me/avatar?inline=thumb",
            headers=headers,
            files={"file": ("a.jpg", PHOTO, "image/jpeg")},
        ),
        422,
        "idempotency_key_mismatch",
    )
    current = await client.get("/users/me/avatar", headers=auth(alice))
    assert current.json()["version"] == first.json()["version"]


async def test_keys_belong_to_their_user(client, auth) -> None:
    alice, bob = user(), user()
    first = await post(client, keyed(auth, alice, "shared-key"))
    other = await post(client, keyed(auth, bob, "shared-key"), OTHER_PHOTO)
    assert first.status_code == other.status_code == 201
    assert "idempotent-replayed" not in other.headers
    assert other.json()["user_id"] == bob


async def test_patch_and_delete_are_answered_again_on_retry(client, auth) -> None:
    alice = user()
    created = await post(client, auth(alice))
    assert created.status_code == 201
    patch = keyed(auth, alice, "crop-1")
    cropped = await client.patch("/users/me/avatar", headers=patch, json={"crop": "0,0,200,200"})
    assert cropped.status_code == 200, cropped.text
    again = await client.patch("/users/me/avatar", headers=patch, json={"crop": [0, 0, 200, 200]})
    assert again.status_code == 200
    assert again.content == cropped.content  # the same crop written another way: the same request
    assert again.headers["idempotent-replayed"] == "true"
    assert_code(
        await client.patch("/users/me/avatar", headers=patch, json={"crop": None}),
        422,
        "idempotency_key_mismatch",
    )

    delete = keyed(auth, alice, "delete-1")
    assert (await client.delete("/users/me/avatar", headers=delete)).status_code == 204
    retried = await client.delete("/users/me/avatar", headers=delete)
    assert retried.status_code == 204  # not 404: the first answer, given again
    assert retried.headers["idempotent-replayed"] == "true"
    assert_code(
        await client.delete("/users/me/avatar", headers=auth(alice)), 404, "avatar_not_found"
    )


async def test_an_error_is_not_kept_so_a_retry_does_the_work(client, auth, settings) -> None:
    alice = user()
    headers = keyed(auth, alice, "after-an-error")
    broken = PHOTO[: len(PHOTO) // 2]
    assert_code(await post(client, headers, broken), 422, "corrupt_image")
    assert_code(await post(client, headers, broken), 422, "corrupt_image")  # done again
    assert stored_files(settings) == []
    # The key was let go: the corrected request may use it.
    fixed = await post(client, headers)
    assert fixed.status_code == 201, fixed.text
    assert "idempotent-replayed" not in fixed.headers


@pytest.mark.parametrize(
    "value", ['""', "x" * 256, '"unterminated', "café".encode(), 'a"b', "tab\there"]
)
async def test_a_malformed_key_is_422_before_the_body_is_read(
    client, auth, settings, value: str | bytes
) -> None:
    headers = {**auth(user()), "Idempotency-Key": value}
    response = await post(client, headers)
    assert_code(response, 422, "invalid_idempotency_key")
    assert stored_files(settings) == []


async def test_a_bare_key_is_the_same_key_as_the_quoted_one(client, auth) -> None:
    alice = user()
    first = await post(client, {**auth(alice), "Idempotency-Key": "bare-token"})
    again = await post(client, {**auth(alice), "Idempotency-Key": '"bare-token"'})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content


async def test_a_retry_while_the_first_request_runs_is_409(settings: Settings, auth) -> None:
    alice = user()
    storage = FaultyStorage(build_storage(settings))
    storage.pause_after_puts = 1  # hold the first upload after its first object
    headers = keyed(auth, alice, "slow-network")
    async with serving(create_app(settings, storage=storage)) as client:
        first = asyncio.create_task(post(client, headers))
        await asyncio.wait_for(storage.paused.wait(), 30)
        busy = await post(client, headers)
        assert_code(busy, 409, "idempotency_key_in_use")
        assert 1 <= int(busy.headers["retry-after"]) <= 5
        storage.pause_after_puts = None
        storage.resume.set()
        done = await first
        assert done.status_code == 201, done.text
        again = await post(client, headers)
        assert again.content == done.content
        written = len(storage.written)
        assert written == len(done.json()["variants"])  # one upload's objects, no more


async def test_a_retry_on_another_replica_gets_the_first_answer(settings: Settings) -> None:
    alice = user()
    async with running_app(settings) as (one, auth), running_app(settings) as (two, _):
        headers = keyed(auth, alice, "two-replicas")
        first = await post(one, headers)
        assert first.status_code == 201
        again = await post(two, headers)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content


async def test_browsers_on_allowed_origins_may_send_the_key_and_read_the_replay_header(
    tmp_path, sqlite_url
) -> None:
    origin = "https://app.example.test"
    settings = make_settings(tmp_path, database_url=sqlite_url, cors_origins=[origin])
    async with running_app(settings) as (client, _auth):
        preflight = await client.options(
            "/users/me/avatar",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, idempotency-key",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
        simple = await client.get("/healthz", headers={"Origin": origin})
        exposed = simple.headers["access-control-expose-headers"].lower()
        assert "idempotent-replayed" in exposed
