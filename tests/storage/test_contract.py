"""The storage contract: one set of tests, run unchanged over every adapter (see ``store``)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

import pytest

from app.storage import Storage, StoredObject

KEY = "avatars/0123456789abcdef/original.webp"
INVALID_KEYS = ["", "/etc/passwd", "../outside.webp", "avatars/../../x.webp", ".hidden", "a//b"]


async def listing(store: Storage, prefix: str = "") -> list[StoredObject]:
    return [obj async for obj in store.list_objects(prefix)]


def test_adapter_satisfies_the_protocol(store: Storage) -> None:
    assert isinstance(store, Storage)


async def test_put_then_get_gives_back_the_same_bytes(store: Storage) -> None:
    data = os.urandom(300_000)
    await store.put(KEY, data, "image/webp")
    assert await store.get(KEY) == data


async def test_put_replaces_an_existing_object(store: Storage) -> None:
    await store.put(KEY, b"first version", "image/webp")
    await store.put(KEY, b"second", "image/webp")
    assert await store.get(KEY) == b"second"
    assert [obj.size for obj in await listing(store)] == [len(b"second")]


async def test_get_of_a_missing_key_is_file_not_found(store: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        await store.get(KEY)


async def test_exists_follows_put_and_delete(store: Storage) -> None:
    assert not await store.exists(KEY)
    await store.put(KEY, b"x", "image/webp")
    assert await store.exists(KEY)
    await store.delete(KEY)
    assert not await store.exists(KEY)
    with pytest.raises(FileNotFoundError):
        await store.get(KEY)


async def test_deleting_a_missing_key_is_not_an_error(store: Storage) -> None:
    await store.delete(KEY)
    await store.put(KEY, b"x", "image/webp")
    await store.delete(KEY)
    await store.delete(KEY)
    assert await listing(store) == []


async def test_list_gives_keys_sizes_and_times_under_a_prefix(store: Storage) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)  # S3 keeps whole seconds
    objects = {
        "avatars/bbb/thumb.webp": b"t" * 10,
        "avatars/aaa/original.webp": b"o" * 200,
        "avatars/aaa/thumb.webp": b"t" * 20,
        "other/file.webp": b"x",
    }
    for key, data in objects.items():
        await store.put(key, data, "image/webp")
    found = await listing(store, "avatars/")
    assert [obj.key for obj in found] == sorted(k for k in objects if k.startswith("avatars/"))
    for obj in found:
        assert obj.size == len(objects[obj.key])
        assert obj.modified.tzinfo is not None
        assert before <= obj.modified <= datetime.now(UTC) + timedelta(seconds=2)
    assert [obj.key for obj in await listing(store, "avatars/aaa/")] == [
        "avatars/aaa/original.webp",
        "avatars/aaa/thumb.webp",
    ]
    assert {obj.key for obj in await listing(store)} == set(objects)
    assert await listing(store, "nothing-here/") == []


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_keys_that_could_escape_are_refused_everywhere(store: Storage, key: str) -> None:
    with pytest.raises(FileNotFoundError):
        await store.put(key, b"x", "image/webp")
    with pytest.raises(FileNotFoundError):
        await store.get(key)
    assert not await store.exists(key)
    await store.delete(key)  # nothing to delete, and no error
    assert await listing(store) == []


async def test_object_url_is_absent_or_absolute_and_names_the_key(store: Storage) -> None:
    await store.put(KEY, b"x", "image/webp")
    url = store.object_url(KEY)
    if url is None:  # the service serves the object (/media/)
        return
    assert url.startswith(("http://", "https://"))
    assert KEY in url


async def test_check_passes_on_a_working_store(store: Storage) -> None:
    await store.check()


async def test_concurrent_puts_all_land(store: Storage) -> None:
    keys = [f"avatars/{i:04d}/original.webp" for i in range(20)]
    await asyncio.gather(*(store.put(key, key.encode(), "image/webp") for key in keys))
    assert [obj.key for obj in await listing(store)] == keys
    assert await asyncio.gather(*(store.get(key) for key in keys)) == [k.encode() for k in keys]


async def test_finished_writes_leave_no_partial_ones(store: Storage) -> None:
    """``list_partial`` names only unfinished writes: none after puts and deletes, and
    ``delete_partial`` never removes an object, whatever name it is given."""
    await store.put(KEY, b"x" * 1000, "image/webp")
    await store.put("avatars/feedbeef/thumb.webp", b"y", "image/webp")
    await store.delete("avatars/feedbeef/thumb.webp")
    assert [obj async for obj in store.list_partial()] == []
    for name in (KEY, "avatars/0123456789abcdef", "../outside", ".tmp-" + "0" * 32):
        await store.delete_partial(name)
    assert await store.get(KEY) == b"x" * 1000
