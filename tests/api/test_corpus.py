"""Every file of the shared corpus through the HTTP API, checked against the manifest.

Each row's class (accept / reject-415 / reject-422) is asserted for strict rows; no row may give
a 5xx; accepted outputs are parsed for metadata and payload markers; a rejection leaves the
store exactly as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.core.config import Settings
from app.db.migrate import upgrade
from tests.conftest import (
    CORPUS,
    corpus_rows,
    make_settings,
    missing,
    running_app,
    stored_files,
)
from tests.images import assert_clean_webp

# Bytes that must never reach a stored file: script and markup payloads hidden in images.
PAYLOAD_MARKERS = (b"<?php", b"<script", b"<svg", b"<html", b"<!DOCTYPE")

STATUS_FOR = {"accept": 201, "accept-sanitize": 201, "reject-415": 415, "reject-422": 422}

ROWS = corpus_rows()

pytestmark = pytest.mark.corpus


def expected_status(row: dict) -> int:
    return STATUS_FOR[row["expected"]]


def snapshot(settings: Settings) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in stored_files(settings)}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def corpus_app(tmp_path_factory) -> AsyncIterator[tuple[httpx.AsyncClient, object, Settings]]:
    if not ROWS:
        missing(f"image corpus not found at {CORPUS}")
    tmp_path = tmp_path_factory.mktemp("corpus")
    url = f"sqlite+aiosqlite:///{tmp_path / 'avatar.db'}"
    await asyncio.to_thread(upgrade, url)  # Alembic runs its own event loop
    settings = make_settings(tmp_path, database_url=url)
    async with running_app(settings) as (client, auth):
        yield client, auth, settings


def test_corpus_is_present() -> None:
    if not ROWS:
        missing(f"image corpus not found at {CORPUS}")
    assert len(ROWS) >= 600


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("row", ROWS, ids=[row["file"] for row in ROWS])
async def test_corpus_file(corpus_app, row: dict) -> None:
    client, auth, settings = corpus_app
    data = (CORPUS / row["file"]).read_bytes()
    user = "corpus-" + row["sha256"][:16]
    before = snapshot(settings)

    response = await client.post(
        "/users/me/avatar",
        headers=auth(user),
        files={"file": (Path(row["file"]).name, data, "image/jpeg")},
    )
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text

    if row["strict"] == "yes":
        assert response.status_code == expected_status(row), (
            f"{row['file']}: expected {row['expected']} ({row['expected_detail']}), "
            f"got {response.status_code} {response.text[:200]}"
        )

    if response.status_code == 201:
        document = response.json()
        for variant in document["variants"]:
            stored = (await client.get(variant["url"])).content
            assert stored != data, "the original bytes were stored"
            assert_clean_webp(stored, markers=PAYLOAD_MARKERS)
        await client.delete("/users/me/avatar", headers=auth(user))
    else:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert snapshot(settings) == before, "a rejected upload changed the store"
        missing_row = await client.get(f"/users/{user}/avatar")
        assert missing_row.status_code == 404
