"""A crop change (PATCH) that races an upload or a delete of the same avatar loses cleanly:
409 ``avatar_changed`` (or 404 when the avatar was deleted), never a 503, and whatever the
crop change wrote is gone again.

The race is made deterministic by running the other request from inside the crop change, at the
two places where it can happen: after the row was read and before the original is fetched, and
after the new squares were written and before the row is committed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.client import assert_problem, upload
from tests.services.support import faulty_app, store_snapshot, table_snapshot


async def replace(client: httpx.AsyncClient) -> None:
    assert (await upload(client, color=(0, 0, 255))).status_code == 201


async def delete(client: httpx.AsyncClient) -> None:
    assert (await client.delete("/users/me/avatar")).status_code == 204


def patch(client: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
    return asyncio.ensure_future(client.patch("/users/me/avatar", json={"crop": "0,0,100,100"}))


@pytest.mark.parametrize(
    ("other", "status", "code"),
    [(replace, 409, "avatar_changed"), (delete, 404, "avatar_not_found")],
)
async def test_patch_whose_original_is_removed_meanwhile(settings, other, status, code) -> None:
    async with faulty_app(settings) as (client, storage):
        created = (await upload(client)).json()
        original_key = created["avatar_url"].split("/media/", 1)[1]

        async def race(key: str) -> None:
            if key == original_key:
                storage.on_get = None
                await other(client)

        storage.on_get = race
        assert_problem(await patch(client), status, code)
        assert storage.on_get is None, "the race did not happen"
        after = await table_snapshot(settings.database_url)
        assert (await store_snapshot(storage)).keys() == {
            key for key in storage.written if key not in storage.deleted
        }
        assert len(after) == (1 if other is replace else 0)


@pytest.mark.parametrize(
    ("other", "status", "code"),
    [(replace, 409, "avatar_changed"), (delete, 404, "avatar_not_found")],
)
async def test_patch_whose_avatar_changes_before_its_commit(settings, other, status, code) -> None:
    async with faulty_app(settings) as (client, storage):
        assert (await upload(client)).status_code == 201
        storage.pause_after_puts = len(storage.written) + 1
        task = patch(client)
        await asyncio.wait_for(storage.paused.wait(), 30)
        storage.pause_after_puts = None  # the other request's puts go through
        patch_keys = set(storage.written[-1:])
        await other(client)
        winner = await store_snapshot(storage)
        storage.resume.set()
        assert_problem(await task, status, code)
        final = await store_snapshot(storage)
        assert patch_keys <= winner.keys()  # written by the crop change before the commit
        assert final.keys() == winner.keys() - patch_keys
