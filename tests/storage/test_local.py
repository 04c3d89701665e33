"""Local storage keeps small files it has read in memory, bounded, and never serves one that is
gone or changed on disk since."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.storage import local
from app.storage.local import LocalStorage


async def test_a_kept_file_is_served_only_while_it_is_on_disk(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    await store.put("a/one.webp", b"first", "image/webp")
    assert await store.get("a/one.webp") == b"first"
    assert await store.get("a/one.webp") == b"first"  # from memory

    await store.delete("a/one.webp")  # as another process's delete would
    with pytest.raises(FileNotFoundError):
        await store.get("a/one.webp")

    await store.put("a/one.webp", b"again", "image/webp")  # written anew (gc, a restore)
    assert await store.get("a/one.webp") == b"again"
    other = LocalStorage(tmp_path)
    await other.put("a/one.webp", b"third", "image/webp")
    assert await store.get("a/one.webp") == b"third"


async def test_a_link_put_in_place_of_a_kept_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "media"
    store = LocalStorage(root)
    await store.put("a/one.webp", b"mine", "image/webp")
    assert await store.get("a/one.webp") == b"mine"
    (tmp_path / "secret").write_bytes(b"secret")
    path = root / "a" / "one.webp"
    path.unlink()
    os.symlink(tmp_path / "secret", path)
    with pytest.raises(FileNotFoundError):
        await store.get("a/one.webp")


async def test_memory_is_bounded_and_large_files_are_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "CACHE_BYTES", 250)
    store = LocalStorage(tmp_path)
    for number in range(5):
        await store.put(f"k/{number}.webp", bytes([number]) * 100, "image/webp")
        assert await store.get(f"k/{number}.webp") == bytes([number]) * 100
    assert store._cached_bytes <= 250 and len(store._cache) == 2
    assert list(store._cache) == ["k/3.webp", "k/4.webp"]  # the least recently read went

    big = b"x" * (local.INLINE_READ_BYTES + 1)
    await store.put("k/big.webp", big, "image/webp")
    assert await store.get("k/big.webp") == big
    assert "k/big.webp" not in store._cache
