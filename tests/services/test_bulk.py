"""The reprocess loop's bookkeeping: users are paged in the database's own order (each exactly
once, whatever its collation does with case and punctuation), and checkpoints only resume the
run they were made for. The commands themselves are tested in tests/cli/test_maintenance.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.variants import VariantSet
from app.db.models import Avatar
from app.db.session import create_engine, create_sessionmaker
from app.services.bulk import (
    Checkpoint,
    CheckpointMismatch,
    count_users_after,
    plan_import,
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
                        variants=VariantSet(()),
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


def test_import_names_are_user_ids_in_nfc(tmp_path: Path) -> None:
    """A folder written on macOS holds NFD names: the same users as typed elsewhere (NFC), so
    an NFD and an NFC file for one user are duplicates; names that are no user id are refused."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    for name in ("Jose\u0301.jpg", "Zoe\u0308.png", "Zo\u00eb.jpg", "me.jpg"):
        (folder / name).write_bytes(b"x")
    plan = plan_import(folder)
    assert [(item.path.name, item.user_id) for item in plan.files] == [
        ("Jose\u0301.jpg", "Jos\u00e9")
    ]
    codes = {outcome.name: outcome.code for outcome in plan.rejected}
    assert codes == {
        "me.jpg": "invalid_user_id",
        "Zoe\u0308.png": "duplicate_name",
        "Zo\u00eb.jpg": "duplicate_name",
    }
