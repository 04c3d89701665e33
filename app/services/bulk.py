"""Work on many images at once, for the command line: import a folder, reprocess every avatar,
process files locally.

- ``import_files`` puts each file through ``replace_avatar``, the unit of work an HTTP upload
  uses, with the same byte limit: the same validation, pipeline and write order. A file that is
  not taken is a reject with the code an upload would get (``corrupt_image``...) or one of
  ``REJECT_CODES`` for what only a folder can get wrong.
- ``reprocess_avatars`` runs ``recrop_avatar`` for one user after another, in the database's
  order of user ids, and records its progress in a ``Checkpoint`` after each one, so a run that
  stopped (Ctrl-C, a crash, a lost connection) continues after the last finished user, and the
  users that failed are tried again first. With ``auto_crop`` it proposes each avatar's crop
  from its stored original, as an upload does, and leaves the crops clients chose alone.
- ``process_files`` runs the pure pipeline on local files and writes what it makes to a folder;
  no database, no storage.

Nothing here prints: progress goes to the ``on_done`` callbacks, results into the reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import AppError, AvatarChanged, AvatarNotFound, PayloadTooLarge
from app.core.security import normalize_user_id
from app.db.models import Avatar
from app.imaging.pipeline import CropBox, PipelineOptions, ProcessedImage, process_image
from app.imaging.pool import WorkerPool
from app.services.avatars import (
    KEEP,
    PROPOSE,
    crop_source,
    get_avatar,
    recrop_avatar,
    replace_avatar,
)
from app.services.runtime import Runtime

# Codes of rejects only a folder of files can have; the others are the API's problem codes.
INVALID_USER_ID = "invalid_user_id"
DUPLICATE_NAME = "duplicate_name"
UNREADABLE_FILE = "unreadable_file"
WRITE_FAILED = "write_failed"  # `process`: the output folder refused the files
REJECT_CODES = (INVALID_USER_ID, DUPLICATE_NAME, UNREADABLE_FILE, WRITE_FAILED)
# `reprocess --auto-crop`: the client chose this avatar's crop; it is left as it is.
CLIENT_CROP = "client_crop"
# Anything that is not an AppError (a bug, a driver error the service did not wrap).
UNEXPECTED = "unexpected_error"

# Users read from the database per query while reprocessing.
USER_BATCH = 500


@dataclass(frozen=True)
class Outcome:
    """What became of one file or user: ``code`` is None when it was done."""

    name: str
    code: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.code is None


def _failure(name: str, exc: BaseException) -> Outcome:
    if isinstance(exc, AppError):
        return Outcome(name, exc.code, exc.detail)
    return Outcome(name, UNEXPECTED, f"{type(exc).__name__}: {exc}")


def group_by_code(outcomes: Iterable[Outcome]) -> dict[str, list[str]]:
    """{code: [names]} of the outcomes that were not done, codes and names sorted."""
    groups: dict[str, list[str]] = {}
    for outcome in outcomes:
        if outcome.code is not None:
            groups.setdefault(outcome.code, []).append(outcome.name)
    return {code: sorted(names) for code, names in sorted(groups.items())}


# Import ------------------------------------------------------------------------------------------


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
class ImportReport:
    dry_run: bool
    imported: list[Outcome] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)  # had an avatar (``skip_existing``)
    rejected: list[Outcome] = field(default_factory=list)
    ignored: int = 0

    @property
    def rejects_by_code(self) -> dict[str, list[str]]:
        return group_by_code(self.rejected)


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
            plan.rejected.append(Outcome(entry.name, INVALID_USER_ID, str(exc)))
            continue
        by_user.setdefault(user_id, []).append(path)
    for user_id, paths in sorted(by_user.items()):
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            for path in paths:
                detail = f"user {user_id!r} has more than one file: {names}"
                plan.rejected.append(Outcome(path.name, DUPLICATE_NAME, detail))
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
    pending = iter(plan.files)

    async def work() -> None:
        for item in pending:  # one iterator shared by the workers: each file is taken once
            outcome, skipped = await _import_one(runtime, item, dry_run, skip_existing)
            if skipped:
                report.skipped.append(outcome)
            elif outcome.ok:
                report.imported.append(outcome)
            else:
                report.rejected.append(outcome)
            if on_done is not None:
                on_done(outcome)

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(runtime.pool.workers, len(plan.files)))):
            group.create_task(work())
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
            await replace_avatar(
                sessions=runtime.sessions,
                storage=runtime.storage,
                pool=runtime.pool,
                options=runtime.options,
                user_id=item.user_id,
                upload=data,
            )
    except Exception as exc:
        return _failure(name, exc), False
    return Outcome(name, detail=item.user_id), False


async def _has_avatar(sessions: async_sessionmaker[AsyncSession], user_id: str) -> bool:
    try:
        await get_avatar(sessions=sessions, user_id=user_id)
    except AvatarNotFound:
        return False
    return True


async def read_limited(path: Path, limit: int) -> bytes | Outcome:
    """The file's bytes; or why not: refused as an upload would be when it is over ``limit``,
    or unreadable."""

    def read() -> bytes | Outcome:
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            return Outcome(str(path), UNREADABLE_FILE, f"{type(exc).__name__}: {exc.strerror}")
        if len(data) > limit:
            too_large = PayloadTooLarge(f"The file is larger than the limit of {limit} bytes.")
            return Outcome(str(path), too_large.code, too_large.detail)
        return data

    return await asyncio.to_thread(read)


# Reprocess ---------------------------------------------------------------------------------------


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
                sessions=runtime.sessions,
                storage=runtime.storage,
                pool=runtime.pool,
                options=runtime.options,
                user_id=user_id,
                crop=PROPOSE if auto_crop else KEEP,
            )
        except _ClientCrop:
            outcome = Outcome(user_id, CLIENT_CROP, "the client chose this crop; left as it is")
            report.skipped.append(outcome)
        except (AvatarNotFound, AvatarChanged) as exc:
            outcome = Outcome(user_id, exc.code, exc.detail)
            report.skipped.append(outcome)
        except Exception as exc:
            outcome, failed = _failure(user_id, exc), True
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


# Process (local files, no server) ----------------------------------------------------------------


@dataclass(frozen=True)
class Processed:
    """One input's result: where its files went and the report written beside them."""

    name: str
    folder: Path
    report: dict[str, Any]


@dataclass
class ProcessReport:
    processed: list[Processed] = field(default_factory=list)
    rejected: list[Outcome] = field(default_factory=list)

    @property
    def rejects_by_code(self) -> dict[str, list[str]]:
        return group_by_code(self.rejected)


REPORT_FILE = "report.json"


def describe(name: str, processed: ProcessedImage) -> dict[str, Any]:
    """The JSON report of one processed input."""
    placeholder = processed.placeholder
    return {
        "input": name,
        "source_format": processed.source_format,
        "width": processed.width,
        "height": processed.height,
        "frames": processed.frames,
        "orientation_applied": processed.orientation,
        "metadata_removed": list(processed.metadata_removed),
        "placeholder": (
            {"blurhash": placeholder.blurhash, "dominant_color": placeholder.dominant_color}
            if placeholder
            else None
        ),
        "variants": [
            {
                "name": variant.name,
                "file": f"{variant.name}.webp",
                "width": variant.width,
                "height": variant.height,
                "bytes": len(variant.data),
                "content_type": variant.content_type,
                "frames": variant.frames,
            }
            for variant in processed.variants
        ],
    }


async def process_files(
    paths: Sequence[Path],
    out: Path,
    *,
    pool: WorkerPool,
    options: PipelineOptions,
    max_bytes: int,
    crop: CropBox | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> ProcessReport:
    """Run the pipeline on each file and write ``out/<stem>/<variant>.webp`` and
    ``out/<stem>/report.json``; as many files at a time as the pool has workers."""
    report = ProcessReport()
    seen: dict[str, str] = {}
    jobs: list[tuple[Path, Path]] = []
    for path in paths:
        stem = path.stem
        if stem in ("", ".", "..") or stem in seen:
            detail = (
                f"{seen[stem]} writes {out / stem} already"
                if stem in seen
                else "the name gives no folder"
            )
            report.rejected.append(Outcome(str(path), DUPLICATE_NAME, detail))
            continue
        seen[stem] = str(path)
        jobs.append((path, out / stem))
    pending = iter(jobs)

    async def work() -> None:
        for path, folder in pending:
            outcome = await _process_one(path, folder, report, pool, options, max_bytes, crop)
            if on_done is not None:
                on_done(outcome)

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(pool.workers, len(jobs)))):
            group.create_task(work())
    report.processed.sort(key=lambda item: item.name)
    report.rejected.sort(key=lambda outcome: outcome.name)
    return report


async def _process_one(
    path: Path,
    folder: Path,
    report: ProcessReport,
    pool: WorkerPool,
    options: PipelineOptions,
    max_bytes: int,
    crop: CropBox | None,
) -> Outcome:
    name = str(path)
    data = await read_limited(path, max_bytes)
    if isinstance(data, Outcome):
        report.rejected.append(data)
        return data
    try:
        processed = await pool.run(process_image, data, options, crop=crop)
    except Exception as exc:
        outcome = _failure(name, exc)
        report.rejected.append(outcome)
        return outcome
    described = describe(path.name, processed)
    try:
        await asyncio.to_thread(_write_outputs, folder, processed, described)
    except OSError as exc:
        outcome = Outcome(name, WRITE_FAILED, f"{folder}: {type(exc).__name__}: {exc.strerror}")
        report.rejected.append(outcome)
        return outcome
    report.processed.append(Processed(name, folder, described))
    return Outcome(name, detail=str(folder))


def _write_outputs(folder: Path, processed: ProcessedImage, described: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for variant in processed.variants:
        (folder / f"{variant.name}.webp").write_bytes(variant.data)
    (folder / REPORT_FILE).write_text(json.dumps(described, indent=2) + "\n")
