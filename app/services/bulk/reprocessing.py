"""``avatar-service reprocess``: ``recrop_avatar`` for one user after another, in the
database's order of user ids, with progress recorded in a ``Checkpoint`` after each one, so a
run that stopped (Ctrl-C, a crash, a lost connection) continues after the last finished user,
and the users that failed are tried again first. With ``auto_crop`` each avatar's crop is
proposed again from its stored original, as an upload does; the crops clients chose are left
alone."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import AvatarChanged, AvatarNotFound
from app.db.models import Avatar
from app.services.avatars import KEEP, PROPOSE, crop_source, get_avatar, recrop_avatar
from app.services.bulk.common import Code, Outcome, failure
from app.services.runtime import Runtime

# Users read from the database per query.
USER_BATCH = 500


class CheckpointMismatch(ValueError):
    """The checkpoint belongs to another run: other settings, or it cannot be read."""


@dataclass
class Checkpoint:
    """Where a reprocess run stands: the last user id it finished (in the database's order) and
    the users that failed. Written atomically after every user; removed when a run ends with
    nothing failed, so the next run starts from the beginning."""

    path: Path
    fingerprint: str
    after: str | None = None
    failed: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> Checkpoint:
        """The saved checkpoint, or a fresh one when there is none."""
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path, fingerprint)
        except (OSError, ValueError) as exc:
            raise CheckpointMismatch(f"the checkpoint {path} cannot be read: {exc}") from None
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            raise CheckpointMismatch(
                f"the checkpoint {path} was made with other settings (database, storage or "
                "image sizes); run with --restart to start again from the first user"
            )
        after, failed = saved.get("after"), saved.get("failed", [])
        if not (after is None or isinstance(after, str)) or not isinstance(failed, list):
            raise CheckpointMismatch(f"the checkpoint {path} is malformed")
        return cls(path, fingerprint, after, [str(user) for user in failed])

    @property
    def started(self) -> bool:
        return self.after is not None or bool(self.failed)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"fingerprint": self.fingerprint, "after": self.after, "failed": self.failed}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def run_fingerprint(runtime: Runtime, *, auto_crop: bool = False) -> str:
    """What a checkpoint is valid for: the database, the store, the options that shape the
    squares, and whether crops are proposed. Passwords never reach the file: only a hash is
    kept."""
    settings = runtime.settings
    options = asdict(runtime.options)
    for limit in ("max_pixels", "max_dimension", "max_frames", "formats"):
        options.pop(limit)  # input limits do not change what a stored original becomes
    target = {
        "database": settings.database_url,
        "storage": settings.storage,
        "where": (
            [settings.s3_endpoint_url, settings.s3_bucket, settings.s3_prefix]
            if settings.storage == "s3"
            else str(settings.media_path.resolve())
        ),
        "options": options,
        **({"auto_crop": True} if auto_crop else {}),
    }
    return hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class ReprocessReport:
    resumed_after: str | None
    done: list[str] = field(default_factory=list)
    # Users whose avatar went or was replaced meanwhile (an upload is made with the current
    # settings already): nothing to do.
    skipped: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)


class _ClientCrop(Exception):
    """The avatar's crop is the client's: ``reprocess --auto-crop`` leaves it alone."""


async def count_users_after(sessions: async_sessionmaker[AsyncSession], after: str | None) -> int:
    statement = select(func.count()).select_from(Avatar)
    if after is not None:
        statement = statement.where(Avatar.user_id > after)
    async with sessions() as session:
        return int(await session.scalar(statement) or 0)


async def user_ids_after(
    sessions: async_sessionmaker[AsyncSession], after: str | None, *, batch: int = USER_BATCH
) -> AsyncIterator[str]:
    """Every user id after ``after``, in the database's own order (its collation decides, so a
    checkpoint made by one run means the same to the next)."""
    while True:
        statement = select(Avatar.user_id).order_by(Avatar.user_id).limit(batch)
        if after is not None:
            statement = statement.where(Avatar.user_id > after)
        async with sessions() as session:
            user_ids = list(await session.scalars(statement))
        for user_id in user_ids:
            yield user_id
        if len(user_ids) < batch:
            return
        after = user_ids[-1]


async def reprocess_avatars(
    runtime: Runtime,
    checkpoint: Checkpoint,
    *,
    auto_crop: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> ReprocessReport:
    """Derive every avatar's squares (and animation still) again from its stored original with
    the current options, one user at a time, continuing from ``checkpoint``. With
    ``auto_crop``, each crop not chosen by a client is proposed again (``AVATAR_AUTO_CROP``);
    the others are skipped (``client_crop``)."""
    report = ReprocessReport(resumed_after=checkpoint.after)
    retry = list(checkpoint.failed)
    total = len(retry) + await count_users_after(runtime.sessions, checkpoint.after)
    if on_start is not None:
        on_start(total)

    async def one(user_id: str) -> bool:
        """Reprocess one user; False when it failed."""
        failed = False
        try:
            if auto_crop:
                current = await get_avatar(sessions=runtime.sessions, user_id=user_id)
                if crop_source(current) == "client":
                    raise _ClientCrop()
            await recrop_avatar(
                runtime.writes(), user_id=user_id, crop=PROPOSE if auto_crop else KEEP
            )
        except _ClientCrop:
            outcome = Outcome(
                user_id, Code.CLIENT_CROP, "the client chose this crop; left as it is"
            )
            report.skipped.append(outcome)
        except (AvatarNotFound, AvatarChanged) as exc:
            outcome = Outcome(user_id, exc.code, exc.detail)
            report.skipped.append(outcome)
        except Exception as exc:
            outcome, failed = failure(user_id, exc), True
            report.failed.append(outcome)
        else:
            outcome = Outcome(user_id)
            report.done.append(user_id)
        if on_done is not None:
            on_done(outcome)
        return not failed

    for user_id in retry:  # those that failed last time, first
        if await one(user_id):
            checkpoint.failed.remove(user_id)
        checkpoint.save()
    async for user_id in user_ids_after(runtime.sessions, checkpoint.after):
        if not await one(user_id):
            checkpoint.failed.append(user_id)
        checkpoint.after = user_id
        checkpoint.save()
    if checkpoint.failed:
        checkpoint.save()
    else:
        checkpoint.clear()
    return report
