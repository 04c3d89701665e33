"""Many users' documents at once: ``GET /avatars?user_id=...`` and ``POST /avatars/lookup``,
on SQLite and PostgreSQL, with the statements the database receives counted."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from app.api.routes.batch import LOOKUP_MAX_BYTES, MAX_USER_IDS
from app.core.config import Settings
from app.db.models import Avatar
from tests.client import assert_problem, upload
from tests.conftest import make_settings

LOOKUP = "/avatars/lookup"
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@pytest.fixture
def settings(tmp_path, database_url: str) -> Settings:
    """The suite's settings without the event dispatcher, which polls the outbox on the same
    engine whenever it likes: the statements counted are then the requests' own."""
    return make_settings(tmp_path, database_url=database_url, events_dispatcher=False)


@contextmanager
def statements(app: FastAPI) -> Iterator[list[str]]:
    """Every statement the app's engine sends to the database meanwhile, as the driver gets it
    (``before_cursor_execute``), transaction control left out."""
    engine = app.state.runtime.engine.sync_engine
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(TRANSACTION_CONTROL):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def ids_query(*user_ids: str) -> list[tuple[str, str]]:
    return [("user_id", user_id) for user_id in user_ids]


async def single(client: httpx.AsyncClient, user_id: str) -> dict:
    response = await client.get(f"/users/{user_id}/avatar")
    assert response.status_code == 200, response.text
    return response.json()


async def copy_avatar(app: FastAPI, source: str, user_ids: list[str]) -> None:
    """Rows for ``user_ids`` with ``source``'s stored objects, as if each had uploaded it."""
    async with app.state.runtime.sessions() as session, session.begin():
        row = await session.get(Avatar, source)
        columns = {attr.key: getattr(row, attr.key) for attr in Avatar.__mapper__.column_attrs}
        session.add_all(Avatar(**{**columns, "user_id": user_id}) for user_id in user_ids)


async def test_documents_are_the_single_documents_and_null_for_users_without(client, auth) -> None:
    for user, color in (("alice", (200, 60, 30)), ("bob", (30, 60, 200))):
        assert (await upload(client, auth, user=user, color=color)).status_code == 201
    response = await client.get("/avatars", params=ids_query("bob", "nobody", "alice"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    avatars = response.json()["avatars"]
    assert list(avatars) == ["bob", "nobody", "alice"]  # the request's order
    assert avatars["bob"] == await single(client, "bob")
    assert avatars["alice"] == await single(client, "alice")
    assert avatars["nobody"] is None
    assert avatars["alice"] != avatars["bob"]

    posted = await client.post(LOOKUP, json={"user_ids": ["bob", "nobody", "alice"]})
    assert posted.status_code == 200, posted.text
    assert posted.content == response.content
    assert posted.headers["etag"] == response.headers["etag"]


async def test_duplicates_answer_once_and_each_spelling_is_its_own_key(client, auth) -> None:
    nfc = "Jos\u00e9"
    nfd = unicodedata.normalize("NFD", nfc)
    assert (await upload(client, auth, user=nfc)).status_code == 201
    response = await client.get("/avatars", params=ids_query(nfd, "nobody", nfc, nfd, "nobody"))
    assert response.status_code == 200, response.text
    avatars = response.json()["avatars"]
    assert list(avatars) == [nfd, "nobody", nfc]
    assert avatars[nfd] == avatars[nfc] == await single(client, nfc)
    assert avatars[nfd]["user_id"] == nfc  # the canonical id


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_hundred_users_are_one_query(app, client, auth, method) -> None:
    assert (await upload(client, auth, user="alice")).status_code == 201
    with_avatars = [f"user-{n:03}" for n in range(60)]
    await copy_avatar(app, "alice", with_avatars)
    wanted = [*with_avatars, *(f"nobody-{n:03}" for n in range(MAX_USER_IDS - 60))]

    with statements(app) as seen:
        if method == "GET":
            response = await client.get("/avatars", params=ids_query(*wanted))
        else:
            response = await client.post(LOOKUP, json={"user_ids": wanted})
    assert response.status_code == 200, response.text
    assert len(seen) == 1, seen
    assert seen[0].lstrip().upper().startswith("SELECT")
    assert "IN (" in seen[0].upper()
    avatars = response.json()["avatars"]
    assert list(avatars) == wanted
    assert sum(document is not None for document in avatars.values()) == 60
    assert avatars["user-007"] == await single(client, "user-007")

    # The counter counts: one query per lookup.
    with statements(app) as seen:
        for user_id in wanted[:3]:
            assert (await client.get("/avatars", params=ids_query(user_id))).status_code == 200
    assert len(seen) == 3, seen


async def test_etag_gives_304_until_an_avatar_changes(client, auth) -> None:
    assert (await upload(client, auth, user="alice")).status_code == 201
    query = ids_query("alice", "bob")
    first = await client.get("/avatars", params=query)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "public, no-cache"
    assert (await client.get("/users/alice/avatar")).headers["cache-control"] == (
        "public, no-cache"
    )

    cached = await client.get("/avatars", params=query, headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == etag

    head = await client.head("/avatars", params=query)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == etag
    assert int(head.headers["content-length"]) == len(first.content)

    # POST: HTTP answers a matching conditional POST with 412, not 304.
    posted = await client.post(
        LOOKUP, json={"user_ids": ["alice", "bob"]}, headers={"If-None-Match": etag}
    )
    assert_problem(posted, 412, "precondition_failed")
    assert posted.headers["etag"] == etag

    # A new avatar for a user in the list is a new answer.
    assert (await upload(client, auth, user="bob")).status_code == 201
    changed = await client.get("/avatars", params=query, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["avatars"]["bob"] == await single(client, "bob")
    posted = await client.post(
        LOOKUP, json={"user_ids": ["alice", "bob"]}, headers={"If-None-Match": etag}
    )
    assert posted.status_code == 200
    assert posted.headers["etag"] == changed.headers["etag"]


INVALID_IDS = ["me", "..", "a/b", "x" * 256, "line\nbreak", "nul\x00", "", "zero\u200bwidth"]


@pytest.mark.parametrize(
    ("user_ids", "code"),
    [
        ([], "no_user_ids"),
        ([f"u{n}" for n in range(MAX_USER_IDS + 1)], "too_many_user_ids"),
        (["alice"] * (MAX_USER_IDS + 1), "too_many_user_ids"),  # duplicates count
        *((["alice", bad], "invalid_user_id") for bad in INVALID_IDS),
    ],
)
async def test_bad_lists_are_refused_before_the_database_is_asked(
    app, client, auth, user_ids, code
) -> None:
    assert (await upload(client, auth, user="alice")).status_code == 201
    before = await single(client, "alice")
    with statements(app) as seen:
        got = await client.get("/avatars", params=ids_query(*user_ids))
        posted = await client.post(LOOKUP, json={"user_ids": user_ids})
    for response in (got, posted):
        body = assert_problem(response, 422, code)
        assert "etag" not in response.headers
        if code == "invalid_user_id":
            assert body["detail"].startswith("User id number 2 ")
    assert seen == []
    assert await single(client, "alice") == before


async def test_a_hundred_longest_ids_fit_the_body() -> None:
    longest = "\U0001f600" * 255  # 4 UTF-8 bytes each
    body = json.dumps({"user_ids": [longest] * MAX_USER_IDS}, ensure_ascii=False).encode()
    assert len(body) <= LOOKUP_MAX_BYTES


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (
            b'{"user_ids": ["alice"]}',
            {"Content-Type": "text/plain"},
            415,
            "unsupported_content_type",
        ),
        (b'{"user_ids": ["alice"', {}, 422, "invalid_request"),
        (b'["alice"]', {}, 422, "invalid_request"),
        (b'{"user_ids": "alice"}', {}, 422, "invalid_request"),
        (b'{"user_ids": ["alice", 7]}', {}, 422, "invalid_request"),
        (b'{"ids": ["alice"]}', {}, 422, "invalid_request"),
        (
            b'{"user_ids": [' + b'"a",' * (LOOKUP_MAX_BYTES // 4) + b'"a"]}',
            {},
            413,
            "body_too_large",
        ),
    ],
)
async def test_bad_bodies_are_refused(app, client, content, headers, status, code) -> None:
    with statements(app) as seen:
        response = await client.post(
            LOOKUP, content=content, headers={"Content-Type": "application/json", **headers}
        )
    assert_problem(response, status, code)
    assert seen == []


async def test_a_streamed_body_over_the_cap_is_refused(app, client) -> None:
    async def chunks():
        yield b'{"user_ids": ['
        for _ in range(LOOKUP_MAX_BYTES // 1000 + 1):
            yield b'"a",' * 250
        yield b'"a"]}'

    with statements(app) as seen:
        response = await client.post(
            LOOKUP, content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body_too_large")
    assert seen == []


def test_openapi_declares_the_answers_and_every_code(app) -> None:
    paths = app.openapi()["paths"]
    get = paths["/avatars"]["get"]
    post = paths[LOOKUP]["post"]
    assert get["parameters"] == [
        {
            **get["parameters"][0],
            "name": "user_id",
            "in": "query",
            "required": True,
            "explode": True,
        }
    ]
    assert get["parameters"][0]["schema"]["maxItems"] == MAX_USER_IDS
    for operation, extra in ((get, {"304"}), (post, {"408", "412", "413", "415"})):
        assert set(operation["responses"]) == {"200", "422", "503"} | extra
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/AvatarBatch"
        }
        for code in ("no_user_ids", "too_many_user_ids", "invalid_user_id"):
            assert f"`{code}`" in operation["responses"]["422"]["description"]
    assert "`body_too_large`" in post["responses"]["413"]["description"]
    assert "`precondition_failed`" in post["responses"]["412"]["description"]


async def test_the_lookup_route_leaves_a_user_named_lookup_their_image(client, auth) -> None:
    assert (await upload(client, auth, user="lookup")).status_code == 201
    # (a redirect to the object with storage that serves objects)
    image = await client.get("/avatars/lookup", params={"size": 64}, follow_redirects=True)
    assert image.status_code == 200
    assert image.headers["content-type"].startswith("image/")
    posted = await client.post(LOOKUP, json={"user_ids": ["lookup"]})
    assert posted.json()["avatars"]["lookup"] == await single(client, "lookup")
    assert_problem(await client.post("/avatars/lookup2", json={}), 405, "method_not_allowed")
