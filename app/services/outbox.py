"""The dispatcher: from the outbox to the targets, at least once, in each user's order.

Each round, in one short transaction:

    route   events not routed yet get one delivery per configured target that wants them
    claim   due deliveries are leased (``leased_until``, ``attempts`` + 1) and committed

then each claimed delivery is sent outside any transaction, and its outcome is written in a
transaction of its own: ``delivered``; or retried later (exponential backoff with jitter);
or ``dead`` once the retry window (``AVATAR_EVENTS_RETRY_FOR``) is over.

Guarantees, and why:

- at least once: a delivery is finished only when a target answered 2xx. A process that dies
  after claiming leaves a lease that ends, and another round claims the delivery again (the
  receiver may then see the event twice: the event id is its idempotency key);
- never by two dispatchers at once: claims take row locks with ``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL (SQLite runs one write transaction at a time), and an outcome is written only if
  ``attempts`` is still the one claimed (a fencing token: a late answer after the lease ended
  changes nothing);
- one user's events reach a target in the order of the changes: a delivery is due only when no
  earlier event of the same user is unrouted or still pending for that target;
- an upload never waits: it only inserts a row; the dispatcher runs beside it (or in
  ``avatar-service events work``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import Select, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from app.core.config import Settings
from app.core.metrics import Metrics
from app.db.models import OutboxDelivery, OutboxEvent, utcnow
from app.services.events import DeliveryFailed, Target, configured_targets

logger = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
# Added to the request time of a lease: the time a dispatcher needs to write the outcome.
LEASE_MARGIN = 15.0
ROUTE_BATCH = 200
GAUGE_INTERVAL = 5.0
PRUNE_INTERVAL = 600.0
# How long a stopping dispatcher waits for the requests it has in flight.
CLOSE_GRACE = 5.0


def as_utc(moment: datetime) -> datetime:
    """SQLite gives datetimes back without their zone; every one stored here is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float
    max_delay: float
    retry_for: float

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.events_retry_first_delay,
            settings.events_retry_max_delay,
            settings.events_retry_for,
        )

    def next_attempt(self, attempts: int, occurred_at: datetime, now: datetime) -> datetime | None:
        """When to try again after ``attempts`` failed tries; None when the window is over."""
        delay = min(self.first_delay * 2 ** max(attempts - 1, 0), self.max_delay)
        # "Equal jitter": at least half the delay, so retries stay spread out and never bunch.
        delay = delay / 2 + random.uniform(0, delay / 2)
        when = now + timedelta(seconds=delay)
        if when > occurred_at + timedelta(seconds=self.retry_for):
            return None
        return when


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    attempts: int
    target: str
    event: OutboxEvent


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _due(now: datetime, targets: Sequence[str], limit: int) -> Select[OutboxDelivery]:
    d = OutboxDelivery
    earlier = aliased(OutboxDelivery)
    earlier_pending = exists().where(
        earlier.target == d.target,
        earlier.user_id == d.user_id,
        earlier.status == PENDING,
        earlier.event_seq < d.event_seq,
    )
    earlier_unrouted = exists().where(
        OutboxEvent.user_id == d.user_id,
        OutboxEvent.routed_at.is_(None),
        OutboxEvent.seq < d.event_seq,
    )
    return (
        select(d)
        .where(
            d.status == PENDING,
            d.target.in_(targets),
            d.next_attempt_at <= now,
            or_(d.leased_until.is_(None), d.leased_until <= now),
            ~earlier_pending,
            ~earlier_unrouted,
        )
        .order_by(d.event_seq)
        .limit(limit)
    )


class Dispatcher:
    """Routes, claims and sends deliveries until stopped. One per process (the app's lifespan
    or ``avatar-service events work``); any number may run against one PostgreSQL database."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        metrics: Metrics | None = None,
        concurrency: int = 16,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.metrics = metrics
        self.targets: Mapping[str, Target] = configured_targets(settings)
        self.policy = RetryPolicy.of(settings)
        self.concurrency = concurrency
        self.in_flight: dict[asyncio.Task[None], Claimed] = {}
        self.wake = asyncio.Event()
        self._gauges_at = 0.0
        self._pruned_at = 0.0
        self.client = httpx.AsyncClient(
            verify=_trusted_roots(),
            follow_redirects=False,
            timeout=httpx.Timeout(settings.events_timeout),
            limits=httpx.Limits(max_connections=concurrency),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until ``stop`` is set; a failing database is logged and tried again."""
        try:
            while not stop.is_set():
                try:
                    await self.round()
                except Exception as exc:
                    # The database is down or busy: the next round tries again; uploads fail
                    # on their own with 503 meanwhile, so one line is enough here.
                    logger.warning("event dispatcher: %s: %s", type(exc).__name__, _line(exc))
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.events_poll_interval):
                        await _first(stop.wait(), self.wake.wait())
        finally:
            await self.close()

    async def close(self) -> None:
        """Let deliveries in flight finish for a few seconds; cancel what is still running then
        and give its lease back, so that another dispatcher sends it at once (the receiver may
        have had it: at least once)."""
        if self.in_flight:
            grace = min(self.settings.events_timeout, CLOSE_GRACE)
            await asyncio.wait(list(self.in_flight), timeout=grace)
        cancelled = [(task, item) for task, item in self.in_flight.items() if not task.done()]
        for task, _item in cancelled:
            task.cancel()
        if cancelled:
            await asyncio.gather(*(task for task, _item in cancelled), return_exceptions=True)
            with contextlib.suppress(Exception):
                async with self.sessions() as session, session.begin():
                    for _task, item in cancelled:
                        await session.execute(
                            update(OutboxDelivery)
                            .where(
                                OutboxDelivery.id == item.delivery_id,
                                OutboxDelivery.attempts == item.attempts,
                                OutboxDelivery.status == PENDING,
                            )
                            .values(leased_until=None)
                        )
        await self.client.aclose()

    async def round(self) -> int:
        """Route new events, claim what is due and start sending it; returns how many."""
        now = utcnow()
        free = self.concurrency - len(self.in_flight)
        async with self.sessions() as session, session.begin():
            await self._route(session, now)
            claimed = await self._claim(session, now, free) if free > 0 else []
        for item in claimed:
            task = asyncio.create_task(self._deliver(item))
            self.in_flight[task] = item
            task.add_done_callback(self._finished)
        await self._housekeeping(now)
        return len(claimed)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.in_flight.pop(task, None)
        self.wake.set()

    async def drain(self, within: float = 30.0) -> None:
        """Rounds until nothing is due or in flight, or ``within`` seconds passed."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            started = await self.round()
            if self.in_flight:
                await asyncio.wait(list(self.in_flight), timeout=deadline - time.monotonic())
            elif not started:
                return

    async def _route(self, session: AsyncSession, now: datetime) -> None:
        statement = (
            select(OutboxEvent)
            .where(OutboxEvent.routed_at.is_(None))
            .order_by(OutboxEvent.seq)
            .limit(ROUTE_BATCH)
        )
        if _is_postgres(session):
            statement = statement.with_for_update(skip_locked=True)
        for event in await session.scalars(statement):
            for key, target in self.targets.items():
                if target.wants(event.type):
                    session.add(
                        OutboxDelivery(
                            event_seq=event.seq,
                            target=key,
                            user_id=event.user_id,
                            status=PENDING,
                            attempts=0,
                            next_attempt_at=now,
                        )
                    )
            event.routed_at = now
        await session.flush()

    async def _claim(self, session: AsyncSession, now: datetime, limit: int) -> list[Claimed]:
        if not self.targets:
            return []
        statement = _due(now, list(self.targets), limit)
        if _is_postgres(session):
            statement = statement.with_for_update(skip_locked=True, of=OutboxDelivery)
        deliveries = list(await session.scalars(statement))
        if not deliveries:
            return []
        events = {
            event.seq: event
            for event in await session.scalars(
                select(OutboxEvent).where(OutboxEvent.seq.in_({d.event_seq for d in deliveries}))
            )
        }
        claimed = []
        for delivery in deliveries:
            target = self.targets[delivery.target]
            lease = self.settings.events_timeout * target.requests() + LEASE_MARGIN
            delivery.attempts += 1
            delivery.leased_until = now + timedelta(seconds=lease)
            claimed.append(
                Claimed(delivery.id, delivery.attempts, delivery.target, events[delivery.event_seq])
            )
        return claimed

    async def _deliver(self, item: Claimed) -> None:
        target = self.targets[item.target]
        error: str | None = None
        try:
            async with asyncio.timeout(self.settings.events_timeout * target.requests()):
                await target.deliver(self.client, item.event, self.settings.public_base_url)
        except DeliveryFailed as exc:
            error = str(exc)
        except TimeoutError:
            error = "timed out"
        try:
            await self._record(item, error)
        except Exception:
            # The lease ends and the delivery is claimed again: at least once.
            logger.exception("could not record the outcome of delivery %s", item.delivery_id)

    async def _record(self, item: Claimed, error: str | None) -> None:
        now = utcnow()
        d = OutboxDelivery
        if error is None:
            values: dict[str, object] = {
                "status": DELIVERED,
                "delivered_at": now,
                "leased_until": None,
                "last_error": None,
            }
            outcome = "delivered"
        else:
            when = self.policy.next_attempt(item.attempts, as_utc(item.event.occurred_at), now)
            values = {"leased_until": None, "last_error": error[:500]}
            if when is None:
                values["status"] = DEAD
                outcome = "dead"
            else:
                values["next_attempt_at"] = when
                outcome = "retried"
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(d)
                .where(d.id == item.delivery_id, d.attempts == item.attempts, d.status == PENDING)
                .values(**values)
            )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return  # replayed or claimed again meanwhile: that attempt decides
        if error is not None:
            log = logger.warning if outcome == "dead" else logger.info
            log(
                "event %s to %s: attempt %d failed (%s); %s",
                item.event.id,
                item.target,
                item.attempts,
                error,
                "given up" if outcome == "dead" else f"retry at {values['next_attempt_at']}",
            )
        if self.metrics is not None:
            self.metrics.event_deliveries.labels(item.target, outcome).inc()
            if outcome == "delivered":
                delay = (now - as_utc(item.event.occurred_at)).total_seconds()
                self.metrics.event_delivery_delay.labels(item.target).observe(delay)

    async def update_gauges(self) -> None:
        """Count pending and dead deliveries in the database (every process sees them all)."""
        if self.metrics is not None:
            counts = await count_deliveries(self.sessions, list(self.targets))
            self.metrics.events_pending.set(counts.pending)
            self.metrics.events_dead.set(counts.dead)

    async def _housekeeping(self, now: datetime) -> None:
        clock = time.monotonic()
        if clock - self._gauges_at >= GAUGE_INTERVAL:
            self._gauges_at = clock
            await self.update_gauges()
        if clock - self._pruned_at >= PRUNE_INTERVAL:
            self._pruned_at = clock
            cutoff = now - timedelta(days=self.settings.events_retention_days)
            await prune(self.sessions, cutoff, list(self.targets))


@functools.cache
def _trusted_roots() -> ssl.SSLContext:
    """httpx's default trust (certifi's CA bundle), loaded once a process: loading it takes
    about 30 ms, which every dispatcher (each app's lifespan) would otherwise pay again."""
    return httpx.create_ssl_context()


def _line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [""])[0][:300]


@asynccontextmanager
async def dispatching(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], metrics: Metrics | None
) -> AsyncIterator[Dispatcher | None]:
    """A dispatcher running beside the caller (a server process), unless
    ``AVATAR_EVENTS_DISPATCHER`` is off; stopped on exit."""
    if not settings.events_dispatcher:
        yield None
        return
    dispatcher = Dispatcher(sessions=sessions, settings=settings, metrics=metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await task


async def _first(*waits: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


@dataclass(frozen=True)
class Counts:
    pending: int
    dead: int


async def count_deliveries(
    sessions: async_sessionmaker[AsyncSession], targets: Sequence[str]
) -> Counts:
    """Deliveries still to make (events not routed yet included) and dead ones."""
    d = OutboxDelivery
    async with sessions() as session:
        unrouted = await session.scalar(select(func.count()).where(OutboxEvent.routed_at.is_(None)))
        by_status = dict(
            (
                await session.execute(
                    select(d.status, func.count())
                    .where(d.target.in_(targets), d.status.in_([PENDING, DEAD]))
                    .group_by(d.status)
                )
            ).all()
        )
    pending = by_status.get(PENDING, 0) + ((unrouted or 0) if targets else 0)
    return Counts(pending=pending, dead=by_status.get(DEAD, 0))


async def prune(
    sessions: async_sessionmaker[AsyncSession], cutoff: datetime, targets: Sequence[str]
) -> int:
    """Remove events older than ``cutoff`` that nothing waits for; returns how many."""
    d = OutboxDelivery
    waiting = exists().where(
        d.event_seq == OutboxEvent.seq, d.status == PENDING, d.target.in_(targets)
    )
    async with sessions() as session, session.begin():
        old = list(
            await session.scalars(
                select(OutboxEvent.seq)
                .where(
                    OutboxEvent.occurred_at < cutoff,
                    OutboxEvent.routed_at.is_not(None),
                    ~waiting,
                )
                .limit(1000)
            )
        )
        if old:
            await session.execute(delete(d).where(d.event_seq.in_(old)))
            await session.execute(delete(OutboxEvent).where(OutboxEvent.seq.in_(old)))
    return len(old)


@dataclass(frozen=True)
class DeliveryRow:
    """One line of ``events list``: an event and one of its deliveries (None: not routed)."""

    event_id: str
    type: str
    user_id: str
    occurred_at: datetime
    target: str | None
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None


async def list_deliveries(
    sessions: async_sessionmaker[AsyncSession],
    *,
    status: str | None = None,
    user_id: str | None = None,
    event_ids: Sequence[str] = (),
    limit: int = 50,
) -> list[DeliveryRow]:
    """The newest events first, each with its deliveries; ``status`` "unrouted" finds the
    events no dispatcher has routed yet."""
    d = OutboxDelivery
    statement = select(OutboxEvent, d).outerjoin(d, d.event_seq == OutboxEvent.seq)
    if status == "unrouted":
        statement = statement.where(OutboxEvent.routed_at.is_(None))
    elif status is not None:
        statement = statement.where(d.status == status)
    if user_id is not None:
        statement = statement.where(OutboxEvent.user_id == user_id)
    if event_ids:
        statement = statement.where(OutboxEvent.id.in_(event_ids))
    statement = statement.order_by(OutboxEvent.seq.desc(), d.target).limit(limit)
    async with sessions() as session:
        rows = (await session.execute(statement)).all()
    return [
        DeliveryRow(
            event_id=event.id,
            type=event.type,
            user_id=event.user_id,
            occurred_at=event.occurred_at,
            target=delivery.target if delivery else None,
            status=delivery.status if delivery else ("unrouted" if not event.routed_at else "-"),
            attempts=delivery.attempts if delivery else 0,
            next_attempt_at=delivery.next_attempt_at if delivery else None,
            delivered_at=delivery.delivered_at if delivery else None,
            last_error=delivery.last_error if delivery else None,
        )
        for event, delivery in rows
    ]


async def replay(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    event_ids: Sequence[str] = (),
    dead: bool = False,
    target: str | None = None,
) -> int:
    """Send events again: the given ones (to every configured target that wants them, or to
    ``target``), or with ``dead`` every dead delivery. Returns the deliveries made due now.
    The event id is unchanged, so receivers that keep ids ignore what they had already."""
    targets = configured_targets(settings)
    if target is not None and target not in targets:
        raise KeyError(target)
    wanted = [target] if target is not None else list(targets)
    now = utcnow()
    fresh = {
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "leased_until": None,
        "last_error": None,
        "delivered_at": None,
    }
    d = OutboxDelivery
    async with sessions() as session, session.begin():
        if dead:
            result = await session.execute(
                update(d).where(d.status == DEAD, d.target.in_(wanted)).values(**fresh)
            )
            return result.rowcount  # type: ignore[attr-defined,no-any-return]
        events = list(
            await session.scalars(select(OutboxEvent).where(OutboxEvent.id.in_(event_ids)))
        )
        count = 0
        for event in events:
            if event.routed_at is None:
                continue  # a dispatcher routes it to every target anyway
            existing = {
                delivery.target: delivery
                for delivery in await session.scalars(select(d).where(d.event_seq == event.seq))
            }
            for key in wanted:
                if target is None and not targets[key].wants(event.type):
                    continue
                if key in existing:
                    for name, value in fresh.items():
                        setattr(existing[key], name, value)
                else:
                    session.add(
                        OutboxDelivery(
                            event_seq=event.seq, target=key, user_id=event.user_id, **fresh
                        )
                    )
                count += 1
        return count


def missing_events(found: Sequence[DeliveryRow], asked: Sequence[str]) -> list[str]:
    known = {row.event_id for row in found}
    return [event_id for event_id in asked if event_id not in known]
