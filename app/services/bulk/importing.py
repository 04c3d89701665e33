"""``avatar-service import``: a folder of existing avatars, one file per user, each put through
``replace_avatar``, the unit of work an HTTP upload uses, with the same byte limit: the same
validation, pipeline and write order. A file that is not taken is a reject with the code an
upload would get (``corrupt_image``...) or a ``Code`` for what only a folder can
get wrong."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import AvatarNotFound
from app.core.security import normalize_user_id
from app.db.models import Avatar
from app.imaging.pipeline import process_image
from app.services.avatars import get_avatar, replace_avatar
from app.services.bulk.common import Code, Outcome, RejectsByCode, failure, fan_out, read_limited
from app.services.runtime import Runtime


@dataclass(frozen=True)
class ImportFile:
    path: Path
    user_id: str


@dataclass
class ImportPlan:
    files: list[ImportFile] = field(default_factory=list)
    # Files refused before any work: a name that is no user id, two files for one user.
    rejected: list[Outcome] = field(default_factory=list)
    # Hidden files and folders, never looked at.
    ignored: int = 0


@dataclass
class ImportReport(RejectsByCode):
    dry_run: bool
    imported: list[Outcome] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)  # had an avatar (``skip_existing``)
    rejected: list[Outcome] = field(default_factory=list)
    ignored: int = 0


def plan_import(directory: Path) -> ImportPlan:
    """The files directly in ``directory``, each for the user its name's stem names
    (``alice.jpg`` -> ``alice``). Raises ``NotADirectoryError``/``FileNotFoundError``."""
    if not directory.is_dir():
        if directory.exists():
            raise NotADirectoryError(f"{directory} is not a folder")
        raise FileNotFoundError(f"{directory} does not exist")
    plan = ImportPlan()
    by_user: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            plan.ignored += 1
            continue
        path = Path(entry.path)
        try:
            # NFC: a name written on macOS (NFD) is the same user as one typed elsewhere.
            user_id = normalize_user_id(path.stem)
        except ValueError as exc:
            plan.rejected.append(Outcome(entry.name, Code.INVALID_USER_ID, str(exc)))
            continue
        by_user.setdefault(user_id, []).append(path)
    for user_id, paths in sorted(by_user.items()):
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            for path in paths:
                detail = f"user {user_id!r} has more than one file: {names}"
                plan.rejected.append(Outcome(path.name, Code.DUPLICATE_NAME, detail))
        else:
            plan.files.append(ImportFile(paths[0], user_id))
    return plan


async def import_files(
    runtime: Runtime,
    plan: ImportPlan,
    *,
    dry_run: bool = False,
    skip_existing: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> ImportReport:
    """Import every planned file, as many at a time as there are image workers.

    With ``dry_run`` each file goes through the pipeline and nothing is written; with
    ``skip_existing`` users who have an avatar already are left alone (a rerun continues).
    """
    report = ImportReport(dry_run=dry_run, rejected=list(plan.rejected), ignored=plan.ignored)
    # A database that cannot be used (unreachable, not migrated) fails the run here, once,
    # rather than every file after its pipeline work.
    async with runtime.sessions() as session:
        await session.execute(select(Avatar.user_id).limit(1))
    if on_start is not None:
        on_start(len(plan.files))

    async def work(item: ImportFile) -> None:
        outcome, skipped = await _import_one(runtime, item, dry_run, skip_existing)
        if skipped:
            report.skipped.append(outcome)
        elif outcome.ok:
            report.imported.append(outcome)
        else:
            report.rejected.append(outcome)
        if on_done is not None:
            on_done(outcome)

    await fan_out(plan.files, work, workers=runtime.pool.workers)
    for outcomes in (report.imported, report.skipped, report.rejected):
        outcomes.sort(key=lambda outcome: outcome.name)
    return report


async def _import_one(
    runtime: Runtime, item: ImportFile, dry_run: bool, skip_existing: bool
) -> tuple[Outcome, bool]:
    """The file's outcome, and whether it was skipped."""
    name = item.path.name
    try:
        if skip_existing and await _has_avatar(runtime.sessions, item.user_id):
            return Outcome(name, detail=f"user {item.user_id!r} has an avatar"), True
        data = await read_limited(item.path, runtime.settings.max_upload_bytes)
        if isinstance(data, Outcome):
            return Outcome(name, data.code, data.detail), False
        if dry_run:
            await runtime.pool.run(process_image, data, runtime.options)
        else:
            await replace_avatar(runtime.writes(), user_id=item.user_id, upload=data)
    except Exception as exc:
        return failure(name, exc), False
    return Outcome(name, detail=item.user_id), False


async def _has_avatar(sessions: async_sessionmaker[AsyncSession], user_id: str) -> bool:
    try:
        await get_avatar(sessions=sessions, user_id=user_id)
    except AvatarNotFound:
        return False
    return True
