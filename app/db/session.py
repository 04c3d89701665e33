"""Engine and session factory, built once by the application's lifespan (never at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# Execution options of a session that only reads: ``await session.connection(**READ_ONLY)``
# before its first query. On SQLite it then never queues behind a write.
READ_ONLY_OPTION = "avatar_read_only"
READ_ONLY: dict[str, Any] = {"execution_options": {READ_ONLY_OPTION: True}}


def create_engine(
    database_url: str,
    *,
    timeout: float = 10.0,
    pre_ping: bool = True,
    pool_size: int = 10,
    max_overflow: int = 10,
) -> AsyncEngine:
    """``timeout``: seconds to connect, and for each statement, on a database server: one that
    accepts connections but never answers fails the request (503) instead of holding it.
    ``pre_ping``, ``pool_size``, ``max_overflow``: the server's connection pool."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        connect_args = {"timeout": timeout, "command_timeout": timeout}
        engine = create_async_engine(
            url,
            pool_pre_ping=pre_ping,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=timeout,
            connect_args=connect_args if url.get_driver_name() == "asyncpg" else {},
        )
        event.listen(engine.sync_engine, "do_connect", _connect_or_operational_error)
        return engine

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # SQLite has no SELECT ... FOR UPDATE: take the write lock when the transaction starts,
        # so two replacements of one avatar run one after the other instead of deadlocking.
        # A read (``READ_ONLY``) begins deferred: under WAL it reads a snapshot and never
        # waits for the write lock.
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _connect_or_operational_error(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Connect; a server that refuses, cannot be reached or times out becomes the driver's
    ``OperationalError``. asyncpg raises plain ``OSError``s there, which SQLAlchemy passes on
    unwrapped, so "database down" would be an unexpected error (500) instead of a
    ``SQLAlchemyError`` (503 database_unavailable)."""
    dbapi = dialect.loaded_dbapi
    try:
        return dbapi.connect(*cargs, **cparams)
    except OSError as exc:  # ConnectionRefusedError, socket.gaierror, TimeoutError, ...
        raise dbapi.OperationalError(f"cannot connect to the database: {exc}") from exc


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
