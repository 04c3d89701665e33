"""Storage adapters behind one Protocol, chosen by ``AVATAR_STORAGE``."""

from __future__ import annotations

from app.core.config import Settings
from app.storage.base import Storage, StoredObject, StoreError
from app.storage.local import LocalStorage
from app.storage.memory import MemoryStorage

__all__ = [
    "LocalStorage",
    "MemoryStorage",
    "Storage",
    "StoreError",
    "StoredObject",
    "build_storage",
]


def build_storage(settings: Settings) -> Storage:
    match settings.storage:
        case "local":
            return LocalStorage(settings.media_path)
        case "s3":
            from app.storage.s3 import S3Storage  # boto3 is imported only when it is used

            return S3Storage.from_settings(settings)
