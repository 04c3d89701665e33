from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings
from tests.conftest import make_settings


@pytest.fixture(params=["local", "s3"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path, sqlite_url: str) -> Settings:
    """Settings on SQLite and each kind of store, whatever AVATAR_TEST_STORAGE says."""
    if request.param == "s3":
        moto_server = request.getfixturevalue("moto_server")
        return make_settings(
            tmp_path, database_url=sqlite_url, **moto_server.settings(s3_prefix="gc")
        )
    return make_settings(tmp_path, database_url=sqlite_url, storage="local")
