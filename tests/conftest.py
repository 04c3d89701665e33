"""Shared fixtures: settings on a temporary data folder, the app on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.core.config import Settings, load_settings
from app.core.security import create_token
from app.db.migrate import upgrade
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get(
    "AVATAR_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
CORPUS = Path(os.environ.get("AVATAR_TEST_CORPUS", ROOT.parent / "shared" / "corpus"))
TEST_SECRET = "test-secret-" + "x" * 40
# The store the suite's settings use: "local" (default) or "s3" (moto's server, over HTTP).
TEST_STORAGE = os.environ.get("AVATAR_TEST_STORAGE", "local")
if TEST_STORAGE not in ("local", "s3"):
    raise pytest.UsageError(f"AVATAR_TEST_STORAGE must be local or s3, not {TEST_STORAGE!r}")


# The slow kinds of test, by marker (registered in pyproject.toml). `make test-fast` leaves them
# out with -m; what follows keeps the markers true as tests are added: a test using one of these
# fixtures gets its marker here, and one that starts a child process unmarked fails.
MARKER_OF_FIXTURE = {"postgres_url": "postgres", "corpus": "corpus", "browser": "browser"}
MAY_START_PROCESSES = ("server", "browser")
_starting_processes_allowed = True


# `make test` runs everything once (AVATAR_TEST_SPLIT_DATABASES=1), the API and service tests
# on both stores: each database beside one store (SQLite with the local store, PostgreSQL with
# moto's S3), and a test of theirs that takes no database once on each store (`suite_store`).
# Tests about the local store (the `local_store` marker) run on both databases with it; those
# that choose their store themselves (`store_settings`), the corpus (on SQLite) and the tests
# elsewhere (on both databases) run on the local store. Without it (a developer running
# pytest), every test runs on both databases and the store AVATAR_TEST_STORAGE names.
SPLIT_DATABASES = os.environ.get("AVATAR_TEST_SPLIT_DATABASES", "") == "1"
if SPLIT_DATABASES and TEST_STORAGE != "local":
    raise pytest.UsageError("AVATAR_TEST_SPLIT_DATABASES=1 chooses the store of each test itself")
SPLIT_DIRS = ("tests/api/", "tests/services/")
# The store of the running test (make_settings uses it).
_store = TEST_STORAGE


def _follows_the_split(node: pytest.Item, fixturenames: Sequence[str]) -> bool:
    """An API or service test whose store follows the split: not about the local store, not
    choosing its store itself, not the corpus."""
    return (
        node.nodeid.startswith(SPLIT_DIRS)
        and node.get_closest_marker("local_store") is None
        and node.get_closest_marker("corpus") is None
        and not {"corpus", "store_settings"} & set(fixturenames)
    )


def _split_store(item: pytest.Item) -> str | None:
    """The store of ``item`` under AVATAR_TEST_SPLIT_DATABASES=1; None: it does not run (the
    corpus, which checks pixels, runs on SQLite only)."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    if "suite_store" in params:
        return str(params["suite_store"])
    postgres = params.get("database_url") == "postgres"
    if (
        not postgres
        or not item.nodeid.startswith(SPLIT_DIRS)
        or item.get_closest_marker("local_store")
    ):
        return "local"
    return "s3" if _follows_the_split(item, item.fixturenames) else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    fixturenames = metafunc.fixturenames
    if (
        SPLIT_DATABASES
        and "database_url" not in fixturenames
        and _follows_the_split(metafunc.definition, fixturenames)
    ):
        metafunc.parametrize("suite_store", ["local", "s3"], indirect=True)


@pytest.fixture(autouse=True)
def suite_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store of this test's settings (see SPLIT_DATABASES)."""
    global _store
    store = _split_store(request.node) if SPLIT_DATABASES else TEST_STORAGE
    assert store is not None, "left out in pytest_collection_modifyitems"
    _store = store
    try:
        yield store
    finally:
        _store = TEST_STORAGE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in MARKER_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
    if SPLIT_DATABASES:
        # The API and service tests run each database once, with its store.
        repeated = [item for item in items if _split_store(item) is None]
        if repeated:
            config.hook.pytest_deselected(items=repeated)
            items[:] = [item for item in items if item not in set(repeated)]
    # The tests that start processes take seconds each, the others milliseconds: run the long
    # ones first, the longest of all (marked `long`) before them. xdist's work stealing (`make
    # test`: --dist worksteal) hands each worker a contiguous share of the list and lets a worker
    # that runs out take the end of another's queue, so the last tests to run are short ones
    # (the sort is stable: a module's tests keep their order).
    items.sort(key=_run_order)


def _run_order(item: pytest.Item) -> int:
    if item.get_closest_marker("long"):
        return 0
    return 1 if any(item.get_closest_marker(m) for m in MAY_START_PROCESSES) else 2


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    global _starting_processes_allowed
    _starting_processes_allowed = any(item.get_closest_marker(m) for m in MAY_START_PROCESSES)
    try:
        return (yield)
    finally:
        _starting_processes_allowed = True


_popen_init = subprocess.Popen.__init__


def _checked_popen_init(self: subprocess.Popen, *args: Any, **kwargs: Any) -> None:
    if not _starting_processes_allowed:
        pytest.fail(
            "this test starts a child process: mark it @pytest.mark.server "
            "(make test-fast leaves those out)",
            pytrace=False,
        )
    _popen_init(self, *args, **kwargs)


subprocess.Popen.__init__ = _checked_popen_init  # type: ignore[method-assign]


def missing(reason: str) -> None:
    """Skip locally; in CI a missing dependency of the suite is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required)", pytrace=False)
    pytest.skip(reason)


def corpus_rows() -> list[dict[str, Any]]:
    manifest = CORPUS / "manifest.json"
    if not manifest.is_file():
        return []
    return json.loads(manifest.read_text())


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "manifest.json").is_file():
        missing(f"image corpus not found at {CORPUS}")
    return CORPUS


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "env": "development",
        "data_dir": tmp_path / "data",
        "jwt_secret": TEST_SECRET,
        "storage": "local",
        "public_base_url": "",
        "workers": 2,
        "rate_limit": "",  # the rate-limit tests switch it on
    }
    if _store == "s3":
        values.update(s3_suite_values())
    values.update(overrides)
    settings = load_settings(**values)
    if settings.storage == "s3":
        # Local storage makes the data folder in its startup check; tests may write into it.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def s3_suite_values() -> dict[str, Any]:
    """S3 settings on a fresh bucket of the session's moto server, under a prefix, with URLs
    that lead to the service's own /media route (where tests/api fetch images)."""
    from tests.s3 import SERVICE_MEDIA_BASE, moto_available, moto_s3

    if not moto_available():
        missing("AVATAR_TEST_STORAGE=s3 needs boto3 and moto[server] installed")
    return moto_s3().settings(s3_prefix="suite", s3_public_base_url=SERVICE_MEDIA_BASE)


@pytest.fixture(scope="session", autouse=True)
def _moto_s3_lifetime() -> Iterator[None]:
    """Stop the session's moto server, if a test started one."""
    yield
    from tests.s3 import stop_moto_s3

    stop_moto_s3()


@pytest.fixture
def moto_server():
    """The session's moto S3 server (every run has it, whatever AVATAR_TEST_STORAGE says)."""
    from tests.s3 import moto_available, moto_s3

    if not moto_available():
        missing("boto3 and moto[server] are not installed")
    return moto_s3()


async def _admin(url: str, *statements: str) -> None:
    """Run statements outside a transaction on the server behind ``url``."""
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    connection = await asyncpg.connect(
        user=parsed.username,
        password=parsed.password,
        host=parsed.host,
        port=parsed.port or 5432,
        database=parsed.database,
        timeout=5,
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test run's own on the PostgreSQL server, so runs never collide."""
    from sqlalchemy.engine import make_url

    name = f"avatar_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_admin(POSTGRES_URL, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        missing(f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}: {exc}")
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    asyncio.run(_admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    from sqlalchemy import text

    from app.db.session import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM avatars"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per session (per xdist worker), copied for each test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "avatar.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    assert not path.with_name(path.name + "-wal").exists(), "the template must be checkpointed"
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite database of the test's own."""
    path = tmp_path / "avatar.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    url = request.getfixturevalue("postgres_url")
    asyncio.run(_truncate(url))
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url=database_url)


@asynccontextmanager
async def serving(application: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and talk to it through httpx."""
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@asynccontextmanager
async def running_app(settings: Settings, **kwargs: Any):
    """A client and an auth-header maker for an app built with ``settings``."""

    def headers(user_id: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {create_token(settings, user_id)}"}

    async with serving(create_app(settings, **kwargs)) as http:
        yield http, headers


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as http:
        yield http


@pytest.fixture
def auth(settings: Settings):
    def headers(user_id: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {create_token(settings, user_id)}"}

    return headers


def stored_files(settings: Settings) -> list[Any]:
    """Every stored file: ``Path``s on local storage, readable S3 objects on S3."""
    if settings.storage == "s3":
        from tests.s3 import stored_objects

        return stored_objects(settings)
    root = settings.media_path
    if not root.exists():
        return []
    return sorted(path for path in root.rglob("*") if path.is_file())
