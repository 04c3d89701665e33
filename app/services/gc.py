"""The reconciler: objects no row references (orphans), unfinished writes (partial), and rows
whose objects are missing.

Orphans come from uploads that died between writing their objects and committing their row
(a killed process), and from deletions the store refused at the time. Partial writes are what a
process killed in the middle of writing an object leaves (local storage's temp files; S3 has
none). ``reconcile`` is safe to run beside a serving process:

- objects are listed *before* rows are read, so an upload that commits in between counts as
  referenced;
- an unreferenced object younger than ``grace`` is kept: uploads write objects first and commit
  after, so the grace period must be longer than an upload can take (storage timeouts bound it);
- a partial write younger than ``grace`` is kept for the same reason;
- an unreferenced object is confirmed with ``exists`` before it is reported: the previous avatar
  of a user who uploaded since the listing is gone already, not an orphan;
- a referenced key absent from the listing is confirmed with ``exists``, because a row read
  after the listing may point at objects written after it; and then against the user's current
  row, because a newer upload (or a crop change, or a delete) may have replaced that row and
  deleted its objects since the rows were read: only a key the current row still points at is
  missing.

Only the service's own key space (``KEY_PREFIX``) is looked at; nothing else in a shared bucket
is ever touched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.variants import KEY_PREFIX
from app.db.models import Avatar
from app.storage.base import Storage, StoredObject

logger = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=1)


@dataclass
class Tally:
    count: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.count += 1
        self.bytes += size


@dataclass(frozen=True)
class MissingObject:
    user_id: str
    key: str


@dataclass
class GcReport:
    applied: bool
    grace: timedelta
    scanned: Tally = field(default_factory=Tally)
    referenced: Tally = field(default_factory=Tally)
    # Unreferenced but younger than the grace period: possibly an upload in flight; kept.
    recent: Tally = field(default_factory=Tally)
    orphans: list[StoredObject] = field(default_factory=list)
    # Unfinished writes older than the grace period (their names are not keys).
    partial: list[StoredObject] = field(default_factory=list)
    deleted: Tally = field(default_factory=Tally)
    failed: list[str] = field(default_factory=list)
    missing: list[MissingObject] = field(default_factory=list)

    @property
    def orphan_bytes(self) -> int:
        return sum(obj.size for obj in self.orphans)

    @property
    def partial_bytes(self) -> int:
        return sum(obj.size for obj in self.partial)

    @property
    def clean(self) -> bool:
        """Nothing needs a person: no row points at a missing object, no deletion failed."""
        return not self.missing and not self.failed


async def reconcile(
    *,
    sessions: async_sessionmaker[AsyncSession],
    storage: Storage,
    grace: timedelta = DEFAULT_GRACE,
    apply: bool = False,
    now: datetime | None = None,
) -> GcReport:
    """Report orphans and missing objects; with ``apply``, delete the orphans."""
    if grace < timedelta(0):
        raise ValueError("the grace period cannot be negative")
    cutoff = (now or datetime.now(UTC)) - grace
    report = GcReport(applied=apply, grace=grace)

    listed: dict[str, StoredObject] = {}
    async for obj in storage.list_objects(KEY_PREFIX):
        listed[obj.key] = obj
        report.scanned.add(obj.size)

    referenced = await referenced_keys(sessions)

    for key, obj in listed.items():
        if key in referenced:
            report.referenced.add(obj.size)
        elif obj.modified > cutoff:
            report.recent.add(obj.size)
        elif await storage.exists(key):  # not the replaced avatar of an upload since the listing
            report.orphans.append(obj)

    async for obj in storage.list_partial(KEY_PREFIX):
        if obj.modified > cutoff:
            report.recent.add(obj.size)
        else:
            report.partial.append(obj)

    absent = [
        MissingObject(user_id, key)
        for key, user_id in sorted(referenced.items())
        if key not in listed and not await storage.exists(key)
    ]
    if absent:
        current = await current_keys(sessions, {item.user_id for item in absent})
        report.missing = [item for item in absent if item.key in current.get(item.user_id, ())]

    if apply:
        for obj in report.orphans:
            await _delete(report, obj, storage.delete, "orphan")
        for obj in report.partial:
            await _delete(report, obj, storage.delete_partial, "partial write")
    return report


async def _delete(
    report: GcReport, obj: StoredObject, delete: Callable[[str], Awaitable[None]], what: str
) -> None:
    try:
        await delete(obj.key)
    except Exception as exc:
        logger.warning("could not delete %s %s: %s", what, obj.key, type(exc).__name__)
        report.failed.append(obj.key)
    else:
        report.deleted.add(obj.size)


async def current_keys(
    sessions: async_sessionmaker[AsyncSession], user_ids: set[str]
) -> dict[str, set[str]]:
    """The keys each of these users' rows points at now (a fresh read)."""
    keys: dict[str, set[str]] = {}
    async with sessions() as session:
        result = await session.execute(
            select(Avatar.user_id, Avatar.variants).where(Avatar.user_id.in_(user_ids))
        )
        for user_id, variants in result:
            keys[user_id] = set(variants.keys)
    return keys


async def referenced_keys(sessions: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    """Every key a row points at, with the user whose row it is."""
    keys: dict[str, str] = {}
    async with sessions() as session:
        result = await session.execute(select(Avatar.user_id, Avatar.variants))
        for user_id, variants in result:
            for key in variants.keys:
                keys[key] = user_id
    return keys
