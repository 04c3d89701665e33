"""Local-disk storage: files under one root folder, written atomically (temp file + rename)."""

from __future__ import annotations

import os
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread

from app.storage.base import StoredObject, StoreError, is_valid_key

# What ``_put`` names a file while it is written; a dot starts it, so no key can name it.
TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{32}")
# Files up to this size are read without a thread (``get``), and kept in memory, up to
# CACHE_BYTES in all (the least recently read go first).
INLINE_READ_BYTES = 64 * 1024
CACHE_BYTES = 32 * 1024 * 1024

# What identifies one file's content: a key's file is written once and never changed, but it
# can be deleted, and a key written again after gc is a new file (a new inode or time).
_Signature = tuple[int, int, int]


def _signature(stat: os.stat_result) -> _Signature:
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        # Used from the event loop's thread only (``get``'s small reads).
        self._cache: OrderedDict[str, tuple[_Signature, bytes]] = OrderedDict()
        self._cached_bytes = 0

    def path_for(self, key: str) -> Path:
        """The file behind ``key``; ``FileNotFoundError`` for any key that could leave the root."""
        if not is_valid_key(key):
            raise FileNotFoundError(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise FileNotFoundError(key)
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await anyio.to_thread.run_sync(self._put, key, data)

    def _put(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temp name starts with a dot, which no valid key does: it can never be served. A
        # process killed before the rename leaves it; `gc` finds it (list_partial).
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        # A small file (every square) is read on the event loop: from memory after a stat that
        # shows it is still there, else from the page cache; either takes microseconds, less
        # than the hop to a worker thread. A large one is read in a thread.
        data = self._cached(key) or self._get(key, max_bytes=INLINE_READ_BYTES)
        if data is None:
            data = await anyio.to_thread.run_sync(self._get, key)
        assert data is not None
        return data

    def _cached(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        try:
            # The key passed path_for when it was cached; a file put in its place since (even
            # a link out of the root) has another signature and is read anew.
            current = _signature(os.stat(self.root / key))
        except OSError:
            current = None
        if current != entry[0]:
            self._forget(key)
            return None
        self._cache.move_to_end(key)
        return entry[1]

    def _keep(self, key: str, signature: _Signature, data: bytes) -> None:
        self._forget(key)
        self._cache[key] = (signature, data)
        self._cached_bytes += len(data)
        while self._cached_bytes > CACHE_BYTES:
            _key, (_signature_, dropped) = self._cache.popitem(last=False)
            self._cached_bytes -= len(dropped)

    def _forget(self, key: str) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cached_bytes -= len(entry[1])

    def _get(self, key: str, *, max_bytes: int | None = None) -> bytes | None:
        """The file's bytes; with ``max_bytes`` (on the event loop), None for a larger file,
        and a smaller one is kept in memory."""
        path = self.path_for(key)
        try:
            with open(path, "rb") as handle:
                if max_bytes is None:
                    return handle.read()
                stat = os.fstat(handle.fileno())
                if stat.st_size > max_bytes:
                    return None
                data = handle.read()
            self._keep(key, _signature(stat), data)
            return data
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise  # no such object: the caller's 404
        except OSError as exc:  # EIO, EACCES, a stale mount: the store is failing, not the key
            raise StoreError(f"cannot read {key}: {exc.strerror or exc}") from exc

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(self._delete, key)

    def _delete(self, key: str) -> None:
        try:
            path = self.path_for(key)
        except FileNotFoundError:
            return
        path.unlink(missing_ok=True)
        self._remove_empty_folders(path.parent)

    def _remove_empty_folders(self, folder: Path) -> None:
        """Remove folders a deletion emptied, up to (not including) the root."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent

    async def exists(self, key: str) -> bool:
        try:
            path = self.path_for(key)
        except FileNotFoundError:
            return False
        return await anyio.to_thread.run_sync(path.is_file)

    async def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        entries = await anyio.to_thread.run_sync(self._scan, prefix)
        for entry in entries:
            yield entry

    def _scan(self, prefix: str, *, partial: bool = False) -> list[StoredObject]:
        """Objects (or, with ``partial``, temp files) whose name starts with ``prefix``."""
        found = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for filename in filenames:
                path = Path(dirpath, filename)
                name = path.relative_to(self.root).as_posix()
                if not name.startswith(prefix):
                    continue
                if not (self._is_temp_name(name) if partial else is_valid_key(name)):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # renamed or deleted since the walk saw it
                    continue
                found.append(
                    StoredObject(name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))
                )
        return sorted(found, key=lambda obj: obj.key)

    @staticmethod
    def _is_temp_name(name: str) -> bool:
        """A temp file ``_put`` made: its exact name, in the root or in a key's folder."""
        folder, _, filename = name.rpartition("/")
        return TEMP_NAME.fullmatch(filename) is not None and (not folder or is_valid_key(folder))

    async def list_partial(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        entries = await anyio.to_thread.run_sync(lambda: self._scan(prefix, partial=True))
        for entry in entries:
            yield entry

    async def delete_partial(self, name: str) -> None:
        await anyio.to_thread.run_sync(self._delete_partial, name)

    def _delete_partial(self, name: str) -> None:
        if not self._is_temp_name(name):
            return
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            return
        path.unlink(missing_ok=True)
        self._remove_empty_folders(path.parent)

    def object_url(self, key: str) -> None:
        return None  # the service serves the files

    async def check(self) -> None:
        await anyio.to_thread.run_sync(self._check)

    def _check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"media root {self.root} cannot be created: {exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"media root {self.root} is not writable")
