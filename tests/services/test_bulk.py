"""The reprocess loop's bookkeeping: users are paged in the database's own order (each exactly
once, whatever its collation does with case and punctuation), and checkpoints only resume the
run they were made for. The commands themselves are tested in tests/test_cli_bulk.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app.db.models import Avatar
from app.db.session import create_engine, create_sessionmaker
from app.services.bulk import (
    Checkpoint,
    CheckpointMismatch,
    count_users_after,
    user_ids_after,
)

# Ids a linguistic collation sorts differently from bytes (case, punctuation, accents).
USER_IDS = ["alice", "Bob", "a-b", "a_b", "ab", "Z", "zoë", "zoe", "10", "9", "émile"]


async def test_user_ids_are_paged_in_database_order_each_once(database_url: str) -> None:
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            for user_id in USER_IDS:
                session.add(
                    Avatar(
                        user_id=user_id,
                        version="0" * 32,
                        width=1,
                        height=1,
                        source_format="PNG",
                        variants=[],
                    )
                )
        async with sessions() as session:
            ordered = list(await session.scalars(select(Avatar.user_id).order_by(Avatar.user_id)))

        paged = [user_id async for user_id in user_ids_after(sessions, None, batch=3)]
        assert paged == ordered and sorted(paged) == sorted(USER_IDS)
        assert await count_users_after(sessions, None) == len(USER_IDS)

        middle = ordered[4]
        rest = [user_id async for user_id in user_ids_after(sessions, middle, batch=3)]
        assert rest == ordered[5:]
        assert await count_users_after(sessions, middle) == len(ordered) - 5
        assert [u async for u in user_ids_after(sessions, ordered[-1], batch=3)] == []
    finally:
        await engine.dispose()


def test_checkpoint_resumes_only_the_run_it_was_made_for(tmp_path: Path) -> None:
    path = tmp_path / "state" / "checkpoint.json"
    fresh = Checkpoint.load(path, "run-a")
    assert (fresh.after, fresh.failed, fresh.started) == (None, [], False)

    fresh.after, fresh.failed = "bob", ["alice"]
    fresh.save()
    again = Checkpoint.load(path, "run-a")
    assert (again.after, again.failed, again.started) == ("bob", ["alice"], True)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.json"]  # no temp file left

    with pytest.raises(CheckpointMismatch, match="--restart"):
        Checkpoint.load(path, "run-b")
    path.write_text("{not json")
    with pytest.raises(CheckpointMismatch, match="cannot be read"):
        Checkpoint.load(path, "run-a")
    path.write_text('{"fingerprint": "run-a", "after": 7, "failed": []}')
    with pytest.raises(CheckpointMismatch, match="malformed"):
        Checkpoint.load(path, "run-a")

    again.clear()
    assert not path.exists()
    again.clear()  # clearing twice is fine
