"""User ids in paths: one canonical (NFC) form, and ids no token could carry are 404 before any
query, on SQLite and on PostgreSQL (where a NUL in a text parameter is a driver error)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

import pytest

from tests.client import assert_problem
from tests.images import jpeg_with_metadata

NFC = "Jos\u00e9"  # é as one code point
NFD = "Jose\u0301"  # e + combining acute accent: looks the same

# Percent-encoded as a client would send them; none is a user id (see normalize_user_id).
INVALID_PATH_IDS = [
    "%00",
    "bob%00",
    "%00%00%00",
    "bob%0Aadmin",
    "%09",
    "%7F",
    "%C2%85",  # NEL, a C1 control
    "%E2%80%AE",  # right-to-left override
    "%E2%80%8B",  # zero-width space
    "x" * 256,
]


async def upload_as(client, auth, user_id: str):
    return await client.post(
        "/users/me/avatar",
        headers=auth(user_id),
        files={"file": ("a.jpg", jpeg_with_metadata((200, 150)), "image/jpeg")},
    )


def assert_no_avatar(response, path: str) -> None:
    assert response.status_code == 404, (path, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), path
    assert response.json()["code"] in ("avatar_not_found", "not_found"), path


@pytest.mark.parametrize("path_id", INVALID_PATH_IDS)
async def test_an_invalid_path_id_is_404_not_a_database_error(client, path_id: str) -> None:
    for path in (
        f"/users/{path_id}/avatar",
        f"/avatars/{path_id}",
        f"/avatars/{path_id}?default=identicon",
        f"/avatars/{path_id}?default=initials&size=64",
    ):
        assert_no_avatar(await client.get(path), path)
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text  # the database was never troubled


@pytest.mark.parametrize("path_id", ["%FF", "%ED%A0%80", "%C3%28"])
async def test_a_path_that_is_not_utf8_is_an_ordinary_id(client, path_id: str) -> None:
    """The server decodes invalid UTF-8 to U+FFFD, a printable character: no such user."""
    response = await client.get(f"/users/{path_id}/avatar")
    assert response.status_code == 404 and response.json()["code"] == "avatar_not_found"


@pytest.mark.parametrize("path_id", ["me", ".", "..", "%2E%2E", "a%2Fb"])
async def test_reserved_path_ids_have_no_avatar(client, path_id: str) -> None:
    for path in (f"/avatars/{path_id}", f"/avatars/{path_id}?default=mp"):
        response = await client.get(path)
        if response.request.url.path == "/avatars":
            # The client resolved "." away: this is the batch lookup, naming nobody.
            assert_problem(response, 422, "no_user_ids")
            continue
        assert_no_avatar(response, path)


async def test_nfc_and_nfd_forms_are_one_user(client, auth) -> None:
    first = await upload_as(client, auth, NFD)
    assert first.status_code == 201, first.text
    assert first.json()["user_id"] == NFC
    second = await upload_as(client, auth, NFC)  # the same user: replaces, never a second row
    assert second.status_code == 201, second.text
    mine = await client.get("/users/me/avatar", headers=auth(NFD))
    assert mine.status_code == 200
    assert mine.json()["version"] == second.json()["version"]
    for form in (NFC, NFD):
        document = await client.get(f"/users/{quote(form)}/avatar")
        assert document.status_code == 200, form
        assert document.json() == mine.json()
        image = await client.get(f"/avatars/{quote(form)}?size=64")
        assert image.status_code in (200, 302), form
    # The default image of a user without an avatar is the same for both forms as well.
    defaults = [
        (await client.get(f"/avatars/{quote(form)}-2?default=initials")).content
        for form in (NFC, NFD)
    ]
    assert defaults[0] == defaults[1]


async def test_a_valid_unusual_id_round_trips(client, auth) -> None:
    user_id = "auth0|5f7c8ec7 c33c6c004bbafe82@Ünïcødé.example"
    response = await upload_as(client, auth, user_id)
    assert response.status_code == 201, response.text
    document = await client.get(f"/users/{quote(user_id, safe='')}/avatar")
    assert document.status_code == 200
    assert document.json()["user_id"] == user_id


async def test_rows_stored_before_the_nfc_rule_take_the_nfc_spelling(database_url: str) -> None:
    """Migration 0007: a row under an NFD spelling is renamed to NFC; where both spellings have
    a row, the one changed last is kept; other ids are left alone."""
    import asyncio

    from sqlalchemy import text

    from app.db.migrate import downgrade, upgrade
    from app.db.session import create_engine

    zoe_nfc, zoe_nfd = "Zo\u00eb", "Zoe\u0308"
    asa_nfc, asa_nfd = "\u00c5sa", "A\u030asa"
    rows = [  # (user_id, version, updated_at)
        (NFD, "v-jose", "2026-01-01 00:00:00+00:00"),
        (zoe_nfc, "v-zoe-old", "2026-01-01 00:00:00+00:00"),
        (zoe_nfd, "v-zoe-new", "2026-02-01 00:00:00+00:00"),
        (asa_nfc, "v-asa-new", "2026-02-01 00:00:00+00:00"),
        (asa_nfd, "v-asa-old", "2026-01-01 00:00:00+00:00"),
        ("plain", "v-plain", "2026-01-01 00:00:00+00:00"),
    ]
    await asyncio.to_thread(downgrade, database_url, "0006")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM avatars"))
            for user_id, version, updated_at in rows:
                await connection.execute(
                    text(
                        "INSERT INTO avatars (user_id, version, width, height, source_format, "
                        "variants, created_at, updated_at) VALUES (:u, :v, 1, 1, 'JPEG', '[]', "
                        ":t, :t)"
                    ),
                    {"u": user_id, "v": version, "t": datetime.fromisoformat(updated_at)},
                )
        await asyncio.to_thread(upgrade, database_url)
        async with engine.connect() as connection:
            found = dict(
                (await connection.execute(text("SELECT user_id, version FROM avatars"))).all()
            )
    finally:
        await engine.dispose()
    assert found == {
        NFC: "v-jose",
        zoe_nfc: "v-zoe-new",
        asa_nfc: "v-asa-new",
        "plain": "v-plain",
    }
