"""The read path's one query: an avatar row by user id, with no ORM session and no transaction.

Reads are what the service does most (every list, chat and profile page), so each costs as few
round trips and thread hops as it can (measured by ``benchmarks/reads.py``):

- SQLite: the SELECT runs on the event loop, over a synchronous connection of its own to the
  same file, in autocommit mode and ``query_only``. One statement by primary key is its own
  snapshot: under WAL it never waits for a writer, and it takes microseconds, where each hop
  to aiosqlite's thread (begin, execute, fetch, rollback) costs more than the query. A read the
  file refuses at once (busy, e.g. while the WAL is recovered) is done again the usual way,
  which waits its turn in a thread.
- PostgreSQL: an autocommit connection (no BEGIN, no ROLLBACK) from a pool of its own, which
  does not ping each connection before use: one round trip a read. When the server closed the
  connection (a restart, a failover), SQLAlchemy invalidates the pool and the read is retried
  once on a new connection; a server that is down fails as every query does (503). More
  concurrent reads than the pool holds wait their turn in arrival order, before the pool: the
  pool's own queue lets a read that arrives as a connection comes back take it ahead of those
  woken for it, which sends them to the back again (measured: the slowest reads at 32
  connections waited seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, Select, bindparam, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import Avatar
from app.db.session import READ_ONLY_OPTION, create_engine

_TABLE = Avatar.__table__
_BY_USER: Select[Any] = select(_TABLE).where(_TABLE.c.user_id == bindparam("user_id"))
# The pool of the PostgreSQL reads, beside the writers' (app.db.session): reads are one short
# statement each, so a few connections serve many concurrent requests, and a burst waits for
# one (up to the database timeout) rather than opening connections only to close them after
# one read (measured: connecting then took more time than reading).
READ_POOL_SIZE = 10
READ_MAX_OVERFLOW = 0


class AvatarReads:
    """``await reads.avatar(user_id)``: the row, or None. Close with ``await reads.close()``."""

    def __init__(self, engine: AsyncEngine, *, timeout: float = 10.0) -> None:
        self._engine = engine
        self._timeout = timeout
        # One turn per pooled connection, given first come, first served (asyncio's Semaphore
        # queues a newcomer behind the reads already waiting).
        self._turns = asyncio.Semaphore(READ_POOL_SIZE)
        self._sync: Engine | None = None
        self._reader: AsyncEngine | None = None
        url = engine.url
        if url.get_backend_name() == "sqlite":
            self._sync = _sqlite_on_the_loop(url.database)
            # The fallback: aiosqlite, a deferred BEGIN (app.db.session), busy_timeout.
            self._async = engine.execution_options(**{READ_ONLY_OPTION: True})
        else:
            self._reader = create_engine(
                url.render_as_string(hide_password=False),
                timeout=timeout,
                pre_ping=False,
                pool_size=READ_POOL_SIZE,
                max_overflow=READ_MAX_OVERFLOW,
            )
            self._async = self._reader.execution_options(isolation_level="AUTOCOMMIT")

    async def avatar(self, user_id: str) -> Avatar | None:
        if self._sync is not None:
            try:
                with self._sync.connect() as connection:
                    row = connection.execute(_BY_USER, {"user_id": user_id}).first()
                return None if row is None else Avatar(**row._mapping)
            except OperationalError:
                pass  # busy or unreadable now: the usual way below waits or fails as it does
        try:
            return await self._read(user_id)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            return await self._read(user_id)  # the pool was invalidated: a new connection

    async def _read(self, user_id: str) -> Avatar | None:
        async with self._turn(), self._async.connect() as connection:
            row = (await connection.execute(_BY_USER, {"user_id": user_id})).first()
        return None if row is None else Avatar(**row._mapping)

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """A connection's turn, in arrival order; as the pool would, it fails (503) when none
        comes within the database timeout."""
        if self._turns.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._turns.acquire()
            except TimeoutError:
                raise PoolTimeout(
                    f"no read connection was free within {self._timeout:g} s"
                ) from None
        else:
            await self._turns.acquire()  # free: taken at once, without a timer
        try:
            yield
        finally:
            self._turns.release()

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.dispose()
        if self._reader is not None:
            await self._reader.dispose()


def _sqlite_on_the_loop(database: str | None) -> Engine | None:
    """A synchronous engine on the same SQLite file, for reads on the event loop; None for an
    in-memory database, which another connection would not see."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    engine = sqlalchemy.create_engine(
        make_url("sqlite://").set(database=database),
        # Only the event loop's thread uses it; a busy file answers at once (the fallback waits).
        connect_args={"check_same_thread": False, "timeout": 0},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # autocommit: no BEGIN, no ROLLBACK
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    return engine
