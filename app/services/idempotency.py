"""Idempotency-Key (the IETF httpapi draft): a retry gets the first answer, the work is not
done again.

A request with a key *claims* it before doing its work, then *completes* it with its answer
(2xx) or *releases* it (an error: the unit of work changed nothing, so doing it again on a retry
is safe and gives the retry its own chance). The claim is one transaction on the key's row, so
replicas agree on who holds a key:

    no row (or an expired one)     -> insert it, held by this request: do the work
    another fingerprint            -> 422 idempotency_key_mismatch
    answered                       -> that answer, again
    held, for less than the lock timeout -> 409 idempotency_key_in_use (retry later)
    held for longer                -> its holder is taken to be gone (a killed replica): take it

Expired keys are deleted by ``expired_keys`` (``avatar-service gc --apply``) and, for the user at
hand, by every claim.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import DatabaseUnavailable, IdempotencyKeyInUse, IdempotencyKeyMismatch
from app.db.idempotency import IdempotencyKey
from app.db.models import utcnow

logger = logging.getLogger(__name__)

# Two first requests with one key race on the primary key; the loser looks again.
_CLAIM_ATTEMPTS = 3


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Claim:
    """Either ``owner`` (this request holds the key: do the work) or ``response`` (the first
    answer, to give again)."""

    owner: str | None = None
    response: StoredResponse | None = None


async def claim(
    *,
    sessions: async_sessionmaker[AsyncSession],
    user_id: str,
    key: str,
    fingerprint: str,
    ttl: timedelta,
    lock_timeout: timedelta,
    now: datetime | None = None,
) -> Claim:
    now = now or utcnow()

    def candidate() -> IdempotencyKey:
        """The row this request inserts if the key is new: held by it, from now on."""
        return IdempotencyKey(
            user_id=user_id,
            key=key,
            fingerprint=fingerprint,
            owner=uuid.uuid4().hex,
            locked_at=now,
            expires_at=now + ttl,
        )

    try:
        for attempt in range(_CLAIM_ATTEMPTS):
            try:
                return await _claim_once(sessions, candidate(), lock_timeout=lock_timeout)
            except IntegrityError:
                if attempt == _CLAIM_ATTEMPTS - 1:
                    raise
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable("The Idempotency-Key could not be checked.") from exc
    raise AssertionError("unreachable")


async def _claim_once(
    sessions: async_sessionmaker[AsyncSession], new: IdempotencyKey, *, lock_timeout: timedelta
) -> Claim:
    now = new.locked_at
    async with sessions() as session, session.begin():
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.user_id == new.user_id, IdempotencyKey.expires_at <= now
            )
        )
        row = await session.scalar(
            select(IdempotencyKey)
            .where(IdempotencyKey.user_id == new.user_id, IdempotencyKey.key == new.key)
            .with_for_update()
        )
        if row is None:
            session.add(new)
            await session.flush()  # a concurrent first claim fails here (IntegrityError)
            return Claim(owner=new.owner)
        if row.fingerprint != new.fingerprint:
            raise IdempotencyKeyMismatch(
                "This Idempotency-Key was used for another request; use a new key for a new "
                "request."
            )
        if row.status is not None:
            return Claim(
                response=StoredResponse(row.status, dict(row.headers or {}), row.body or b"")
            )
        held_until = _aware(row.locked_at) + lock_timeout
        if held_until > now:
            wait = math.ceil((held_until - now).total_seconds())
            raise IdempotencyKeyInUse(
                "The first request with this Idempotency-Key is still being processed; retry "
                "when it has answered.",
                retry_after=max(1, min(wait, 5)),
            )
        row.owner = new.owner
        row.locked_at = now
        return Claim(owner=new.owner)


async def complete(
    *,
    sessions: async_sessionmaker[AsyncSession],
    user_id: str,
    key: str,
    owner: str,
    response: StoredResponse,
) -> None:
    """Keep the answer for the retries. Best effort: if it cannot be kept the key stays held,
    and a retry after the lock timeout does the work again."""
    try:
        async with sessions() as session, session.begin():
            await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.user_id == user_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.owner == owner,
                )
                .values(status=response.status, headers=response.headers, body=response.body)
            )
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("could not keep the answer for an Idempotency-Key (%s)", type(exc).__name__)


async def release(
    *, sessions: async_sessionmaker[AsyncSession], user_id: str, key: str, owner: str
) -> None:
    """Let the key go after a failed request, so that a retry does the work. Best effort: a key
    that cannot be released is taken over after the lock timeout."""
    try:
        async with sessions() as session, session.begin():
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.user_id == user_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.owner == owner,
                )
            )
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("could not release an Idempotency-Key (%s)", type(exc).__name__)


async def expired_keys(
    *, sessions: async_sessionmaker[AsyncSession], apply: bool, now: datetime | None = None
) -> int:
    """How many keys have expired; with ``apply`` they are deleted."""
    expired = IdempotencyKey.expires_at <= (now or utcnow())
    async with sessions() as session, session.begin():
        if apply:
            result = await session.execute(delete(IdempotencyKey).where(expired))
            return cast(CursorResult[Any], result).rowcount or 0
        return await session.scalar(select(func.count()).where(expired)) or 0


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
