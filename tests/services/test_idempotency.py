"""The Idempotency-Key rules on the database itself (SQLite and PostgreSQL): one holder per
key even when claims race, a holder gone quiet is taken over, expired keys are forgotten and
deleted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import IdempotencyKeyInUse, IdempotencyKeyMismatch
from app.db.models import utcnow
from app.db.session import create_engine, create_sessionmaker
from app.services import idempotency
from app.services.idempotency import StoredResponse

TTL = timedelta(hours=24)
LOCK = timedelta(seconds=120)
ANSWER = StoredResponse(201, {"content-type": "application/json"}, b'{"version": "v1"}')


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


def claim(sessions, user_id: str, key: str = "k", fingerprint: str = "f" * 64, **kwargs):
    return idempotency.claim(
        sessions=sessions,
        user_id=user_id,
        key=key,
        fingerprint=fingerprint,
        ttl=kwargs.pop("ttl", TTL),
        lock_timeout=LOCK,
        **kwargs,
    )


def user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def test_racing_claims_leave_one_holder(sessions) -> None:
    alice = user()
    results = await asyncio.gather(
        *(claim(sessions, alice) for _ in range(4)), return_exceptions=True
    )
    holders = [r for r in results if isinstance(r, idempotency.Claim) and r.owner]
    refused = [r for r in results if isinstance(r, IdempotencyKeyInUse)]
    assert len(holders) == 1, results
    assert len(refused) == 3, results


async def test_a_completed_key_gives_its_answer_and_refuses_another_request(sessions) -> None:
    alice = user()
    held = await claim(sessions, alice)
    await idempotency.complete(
        sessions=sessions, user_id=alice, key="k", owner=held.owner, response=ANSWER
    )
    assert (await claim(sessions, alice)).response == ANSWER
    with pytest.raises(IdempotencyKeyMismatch):
        await claim(sessions, alice, fingerprint="e" * 64)


async def test_a_holder_gone_quiet_is_taken_over_and_cannot_write_after(sessions) -> None:
    alice = user()
    start = utcnow()
    first = await claim(sessions, alice, now=start)
    with pytest.raises(IdempotencyKeyInUse):
        await claim(sessions, alice, now=start + LOCK - timedelta(seconds=1))
    second = await claim(sessions, alice, now=start + LOCK + timedelta(seconds=1))
    assert second.owner and second.owner != first.owner
    # The first holder comes back late: its answer and its release no longer count.
    await idempotency.complete(
        sessions=sessions, user_id=alice, key="k", owner=first.owner, response=ANSWER
    )
    await idempotency.release(sessions=sessions, user_id=alice, key="k", owner=first.owner)
    with pytest.raises(IdempotencyKeyInUse):
        await claim(sessions, alice, now=start + LOCK + timedelta(seconds=2))


async def test_an_expired_key_is_forgotten_and_gc_deletes_it(sessions) -> None:
    alice, bob = user(), user()
    long_ago = utcnow() - TTL - timedelta(minutes=1)
    for who in (alice, bob):
        held = await claim(sessions, who, now=long_ago)
        await idempotency.complete(
            sessions=sessions, user_id=who, key="k", owner=held.owner, response=ANSWER
        )
    assert await idempotency.expired_keys(sessions=sessions, apply=False) >= 2
    # A claim forgets its user's expired keys: the same key is a new request again.
    fresh = await claim(sessions, alice, fingerprint="e" * 64)
    assert fresh.owner is not None
    deleted = await idempotency.expired_keys(sessions=sessions, apply=True)
    assert deleted >= 1  # bob's (alice's went with her claim)
    assert await idempotency.expired_keys(sessions=sessions, apply=False) == 0
    assert (await claim(sessions, bob)).owner is not None
