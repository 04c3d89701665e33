"""Every storage adapter, built the way the service builds it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core.config import load_settings
from app.storage import LocalStorage, MemoryStorage, Storage
from app.storage.s3 import S3Storage

ADAPTERS = ["local", "memory", "s3"]


def s3_storage(moto_server, tmp_path: Path, **overrides) -> S3Storage:
    values = {"_env_file": None, "data_dir": tmp_path, **moto_server.settings(**overrides)}
    return S3Storage.from_settings(load_settings(**values))


@pytest.fixture(params=ADAPTERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    match request.param:
        case "local":
            yield LocalStorage(tmp_path / "media")
        case "memory":
            yield MemoryStorage()
        case "s3":
            storage = s3_storage(
                request.getfixturevalue("moto_server"), tmp_path, s3_prefix="contract"
            )
            try:
                yield storage
            finally:
                storage.close()
