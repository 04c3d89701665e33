"""The storage interface: a few verbs over opaque keys, with stdlib errors.

Adapters: ``LocalStorage`` (a folder on disk, atomic writes), ``S3Storage`` (S3 or an
S3-compatible store through an injected boto3 client) and ``MemoryStorage`` (a fake for tests,
like httpx's MockTransport). ``get`` raises ``FileNotFoundError`` for a missing key and
``StoreError`` when the store fails; ``delete`` of a missing key is not an error. Keys
are made by the service, never by clients, and always match ``KEY_PATTERN``.

``list_partial`` and ``delete_partial`` are for ``gc``: writes a killed process left unfinished
(local temp files). Their names are never keys, so nothing else can reach them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

# Segments start with a letter or digit: no "..", no hidden files, no absolute paths.
KEY_PATTERN = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}){0,7}"
)

CONTENT_TYPES = {
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
}


def is_valid_key(key: str) -> bool:
    return KEY_PATTERN.fullmatch(key) is not None and ".." not in key


def content_type_for(key: str) -> str:
    for suffix, content_type in CONTENT_TYPES.items():
        if key.endswith(suffix):
            return content_type
    return "application/octet-stream"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime


class StoreError(OSError):
    """The store did not answer or refused the call; the caller may retry later."""


@runtime_checkable
class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...

    def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """The objects under ``prefix``, in key order."""
        ...

    def list_partial(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """Unfinished writes under ``prefix`` (none where the store's writes are atomic)."""
        ...

    async def delete_partial(self, name: str) -> None:
        """Remove one unfinished write ``list_partial`` named; a missing one is not an error."""
        ...

    def object_url(self, key: str) -> str | None:
        """Where clients fetch ``key`` from the store itself (S3, a CDN), so the service
        redirects to it instead of passing the bytes through; None when the store serves
        nothing itself (the service then serves the object)."""
        ...

    async def check(self) -> None:
        """Raise ``StoreError`` when the store cannot be used."""
        ...


async def no_partial_writes() -> AsyncIterator[StoredObject]:
    """The ``list_partial`` of a store whose writes are atomic: an interrupted put leaves
    nothing behind."""
    nothing: tuple[StoredObject, ...] = ()
    for obj in nothing:
        yield obj
