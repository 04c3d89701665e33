"""An in-memory store with the same contract as the real ones, for tests and local tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from app.storage.base import StoredObject, StoreError, is_valid_key, no_partial_writes


class MemoryStorage:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str, datetime]] = {}
        self.available = True

    def _ensure_available(self) -> None:
        if not self.available:
            raise StoreError("memory storage switched off")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self._ensure_available()
        if not is_valid_key(key):
            raise FileNotFoundError(key)
        self.objects[key] = (bytes(data), content_type, datetime.now(UTC))

    async def get(self, key: str) -> bytes:
        self._ensure_available()
        try:
            return self.objects[key][0]
        except KeyError:
            raise FileNotFoundError(key) from None

    async def delete(self, key: str) -> None:
        self._ensure_available()
        self.objects.pop(key, None)

    async def exists(self, key: str) -> bool:
        self._ensure_available()
        return key in self.objects

    async def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        self._ensure_available()
        for key in sorted(self.objects):
            if key.startswith(prefix):
                data, _content_type, modified = self.objects[key]
                yield StoredObject(key, len(data), modified)

    def list_partial(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        return no_partial_writes()

    async def delete_partial(self, name: str) -> None:
        return None

    def object_url(self, key: str) -> None:
        return None  # the service serves the files

    async def check(self) -> None:
        self._ensure_available()
