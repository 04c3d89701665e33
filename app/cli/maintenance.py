"""The commands that look after what is stored: ``gc`` reconciles the store with the database;
``import``, ``reprocess`` and ``process`` work on many images at once (app/services/bulk/).
Progress bars and notes go to stderr; stdout carries the summary only (a table, or JSON with
--json)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli import exits, render

if TYPE_CHECKING:
    from app.services.bulk import (
        Checkpoint,
        ImportReport,
        Outcome,
        ProcessReport,
        ReprocessReport,
    )
    from app.services.gc import GcReport

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the summary as JSON on stdout (no table).")
]


def gc(
    grace: Annotated[
        int,
        typer.Option(
            min=0,
            help="Seconds an unreferenced object or unfinished write is left alone, so uploads "
            "in flight are safe.",
        ),
    ] = 3600,
    apply: Annotated[
        bool, typer.Option("--apply", help="Delete the orphans (default: a dry run).")
    ] = False,
    show: Annotated[
        bool, typer.Option("--list", help="Print the key of every orphan and unfinished write.")
    ] = False,
) -> None:
    """Find stored objects no avatar references, unfinished writes (temp files of a killed
    process), avatars whose objects are missing, and expired Idempotency-Keys (deleted with the
    orphans).

    Exits 0 when all is well; 1 when an avatar points at a missing object, a deletion failed,
    or the database or the store failed during the run; 2 when the configuration is invalid or
    the store cannot be used at all (the same check as at startup).
    """
    from datetime import timedelta

    from app.services.gc import reconcile
    from app.services.idempotency import expired_keys
    from app.services.runtime import open_runtime

    settings = exits.settings()

    async def work() -> tuple[GcReport, int]:
        async with open_runtime(settings, images=False) as runtime:
            report = await reconcile(
                sessions=runtime.sessions,
                storage=runtime.storage,
                grace=timedelta(seconds=grace),
                apply=apply,
            )
            return report, await expired_keys(sessions=runtime.sessions, apply=apply)

    report, expired = exits.run(work)
    render.gc_report(report, settings, expired=expired, show_orphans=show)
    if not report.clean:
        raise typer.Exit(exits.FAILED)


def import_(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder of images, one per user.")
    ],
    user_from_filename: Annotated[
        bool,
        typer.Option(
            "--user-from-filename",
            help="Each file is the avatar of the user its name's stem names (alice.jpg: alice). "
            "Required: it is the only way users are chosen.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Run every file through the pipeline; store nothing."),
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Leave users who have an avatar alone (continues an interrupted import).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Import existing avatars from a folder, through the same pipeline as an upload.

    The files directly in DIR are imported; hidden files and folders are ignored. Each file
    replaces its user's avatar as an upload would, with the same limits. Prints how many were
    imported and each reject with its reason. Exits 0 when every file was imported (or
    skipped), 1 when some were rejected or failed, 2 on invalid configuration, an unusable
    store or a bad DIR.
    """
    from app.services.bulk import import_files, plan_import
    from app.services.runtime import open_runtime

    if not user_from_filename:
        raise exits.fail(
            "say how files map to users: --user-from-filename (alice.jpg becomes the avatar "
            "of user 'alice')",
            exits.USAGE,
        )
    settings = exits.settings()
    try:
        plan = plan_import(directory)
    except OSError as exc:
        raise exits.fail(str(exc), exits.USAGE) from None
    done: list[Outcome] = []

    async def work() -> ImportReport:
        async with open_runtime(settings) as runtime:
            with render.ProgressBar("import (dry run)" if dry_run else "import") as bar:

                def advance(outcome: Outcome) -> None:
                    done.append(outcome)
                    bar.advance()

                return await import_files(
                    runtime,
                    plan,
                    dry_run=dry_run,
                    skip_existing=skip_existing,
                    on_start=bar.start,
                    on_done=advance,
                )

    report = exits.run(
        work,
        interrupted=lambda: (
            f"{sum(o.ok for o in done)} of {len(plan.files)} files done; run again with "
            "--skip-existing to continue"
        ),
    )
    render.import_summary(report, directory, as_json=as_json)
    if report.rejected:
        raise typer.Exit(exits.FAILED)


def reprocess(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="File that records progress [default: AVATAR_DATA_DIR/reprocess-checkpoint.json].",
            show_default=False,
        ),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore the checkpoint; start from the first user.")
    ] = False,
    auto_crop: Annotated[
        bool,
        typer.Option(
            "--auto-crop",
            help="Propose each crop again from the stored original (AVATAR_AUTO_CROP: faces, "
            "else content, else centre), as an upload does; crops a client chose are left "
            "alone (skipped as client_crop).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Regenerate every avatar's squares from its stored original with the current settings.

    Run it after changing AVATAR_THUMBNAIL_SIZE(S) or the pipeline, or with --auto-crop to give
    avatars stored before the automatic crop (or with another AVATAR_AUTO_CROP) a proposed one.
    Users are done one at a time in user id order, each exactly like a crop change (new
    objects, then the row, then the old objects deleted); the original is kept. Resumable: a
    rerun continues after the last finished user and first retries the users that failed; the
    checkpoint is removed when a run ends with no failures. Exits 0 when all went well, 1 when
    some users failed, 2 on invalid configuration, an unusable store or a checkpoint made with
    other settings, 130 on Ctrl-C.
    """
    from app.services.bulk import reprocess_avatars, run_fingerprint
    from app.services.runtime import open_runtime

    settings = exits.settings()
    path = checkpoint or settings.data_dir / "reprocess-checkpoint.json"
    state: list[Checkpoint] = []

    async def work() -> ReprocessReport:
        async with open_runtime(settings) as runtime:
            saved = _open_checkpoint(path, run_fingerprint(runtime, auto_crop=auto_crop), restart)
            state.append(saved)
            if saved.started:
                typer.echo(
                    f"resuming after user {saved.after!r}"
                    + (f", {len(saved.failed)} failed users first" if saved.failed else ""),
                    err=True,
                )
            with render.ProgressBar("reprocess --auto-crop" if auto_crop else "reprocess") as bar:
                return await reprocess_avatars(
                    runtime, saved, auto_crop=auto_crop, on_start=bar.start, on_done=bar.advance
                )

    def interrupted() -> str:
        after = state[0].after if state else None
        where = f"after user {after!r}" if after is not None else "from the first user"
        again = "reprocess --auto-crop" if auto_crop else "reprocess"
        return f"run `avatar-service {again}` again to continue {where}"

    report = exits.run(work, interrupted=interrupted)
    kept = state[0].path if state and state[0].failed else None
    render.reprocess_summary(report, checkpoint=kept, as_json=as_json)
    if report.failed:
        raise typer.Exit(exits.FAILED)


def _open_checkpoint(path: Path, fingerprint: str, restart: bool) -> Checkpoint:
    """The checkpoint to continue from (a fresh one with ``restart``), once it is known to be
    writable: a ``ConfigurationError`` now rather than after the first user."""
    import errno
    import os

    from app.core.config import ConfigurationError
    from app.services.bulk import Checkpoint, CheckpointMismatch

    if restart:
        saved = Checkpoint(path, fingerprint)
    else:
        try:
            saved = Checkpoint.load(path, fingerprint)
        except CheckpointMismatch as exc:
            raise ConfigurationError(str(exc)) from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as exc:
        raise ConfigurationError(
            f"the checkpoint {path} cannot be written: {exc.strerror}"
        ) from None
    return saved


def process(
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE...", help="Images to process.", show_default=False)
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Folder for the results: DIR/STEM/VARIANT.webp and DIR/STEM/report.json, "
            "STEM being the file's name without its extension.",
        ),
    ],
    crop: Annotated[
        str | None,
        typer.Option(help="x,y,width,height in pixels of the upright image.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the image pipeline on local files, without a server, database or storage.

    Each FILE gets a folder in the --out DIR with its variants and a report.json (sizes, bytes,
    metadata_removed, orientation_applied, placeholder). The settings (sizes, limits, formats)
    are the service's. Exits 0 when every file was processed, 1 when some were rejected, 2 on
    invalid configuration, a bad --crop or an output folder that cannot be made.
    """
    from app.core.errors import InvalidCrop
    from app.imaging.pipeline import parse_crop
    from app.services.bulk import process_files
    from app.services.runtime import pipeline_options, worker_pool

    try:
        box = parse_crop(crop) if crop is not None else None
    except InvalidCrop as exc:
        raise exits.fail(f"--crop: {exc.detail}", exits.USAGE) from None
    settings = exits.settings()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise exits.fail(
            f"the output folder {out} cannot be made: {exc.strerror}", exits.USAGE
        ) from None
    pool = worker_pool(settings, queue_size=0)

    async def work() -> ProcessReport:
        with render.ProgressBar("process") as bar:
            bar.start(len(files))
            return await process_files(
                files,
                out,
                pool=pool,
                options=pipeline_options(settings),
                max_bytes=settings.max_upload_bytes,
                crop=box,
                on_done=bar.advance,
            )

    try:
        report = exits.run(work, interrupted=lambda: "the files done so far are in place")
    finally:
        pool.shutdown()
    render.process_summary(report, files, out, as_json=as_json)
    if report.rejected:
        raise typer.Exit(exits.FAILED)
