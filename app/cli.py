"""``avatar-service``: serve, migrate, mint development tokens, reconcile the storage, and
import, reprocess or process images in bulk."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from app.core.config import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID
    from rich.table import Table

    from app.services.bulk import ImportReport, Outcome, ProcessReport, ReprocessReport
    from app.services.gc import GcReport

T = TypeVar("T")

cli = typer.Typer(
    name="avatar-service",
    help="Avatar and image-upload service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are wrapped in the source: markdown joins their lines into paragraphs (Rich
    # markup would keep the breaks and swallow "[default: ...]").
    rich_markup_mode="markdown",
)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: AVATAR_HOST].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: AVATAR_PORT].")] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1, help="Server processes [default: AVATAR_PROCESSES].", show_default=False
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (run `migrate` first). SIGTERM lets in-flight requests finish."""
    import asyncio

    import uvicorn

    from app.core.logging import configure_logging
    from app.core.security import is_loopback_address
    from app.main import check_storage, close_storage, create_app
    from app.storage import build_storage

    settings = _settings()
    address = host or settings.host
    if settings.dev_tokens and not is_loopback_address(address):
        typer.echo(
            f"error: AVATAR_DEV_TOKENS=true is refused on {address}, which is not a loopback "
            "address: development tokens let anyone sign in as anyone",
            err=True,
        )
        raise typer.Exit(2)
    # The storage is built and checked here, before uvicorn runs the lifespan, so that a
    # missing bucket or refused credentials end in one line instead of uvicorn's traceback.
    try:
        storage = build_storage(settings)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        asyncio.run(check_storage(storage))
        app = create_app(settings, storage=storage)
    except ConfigurationError as exc:
        close_storage(storage)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    options = {
        "host": address,
        "port": settings.port if port is None else port,
        "proxy_headers": True,
        "server_header": False,
        "access_log": False,  # one JSON line per request comes from the app
        "log_config": None,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        # httptools with the request head bounded in size and time (app/api/protocol.py).
        "http": "app.api.protocol:BoundedHttpToolsProtocol",
    }
    count = processes or settings.processes
    if count > 1:
        # Each process builds its own app (and storage client) from the same settings.
        close_storage(storage)
        uvicorn.run("app.main:create_served_app", factory=True, workers=count, **options)
        return
    try:
        uvicorn.run(app, **options)
    finally:
        close_storage(storage)


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the database schema (Alembic upgrade to head)."""
    from app.db.migrate import upgrade

    settings = _settings()
    try:
        upgrade(settings.database_url, revision)
    except Exception as exc:
        typer.echo(f"error: migration failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"database at revision {revision}", err=True)


@cli.command()
def token(
    user_id: Annotated[str, typer.Argument(help="The user id (the token's `sub`).")],
    ttl: Annotated[
        int | None, typer.Option(help="Lifetime in seconds (default: AVATAR_TOKEN_TTL_SECONDS).")
    ] = None,
) -> None:
    """Print a bearer token the server with the same configuration accepts."""
    from app.core.security import create_token

    settings = _settings()
    try:
        typer.echo(create_token(settings, user_id, ttl_seconds=ttl))
    except (ConfigurationError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def gc(
    apply: Annotated[
        bool, typer.Option("--apply", help="Delete the orphans (default: a dry run).")
    ] = False,
    grace: Annotated[
        int,
        typer.Option(
            min=0,
            help="Seconds an unreferenced object or unfinished write is left alone, so uploads "
            "in flight are safe.",
        ),
    ] = 3600,
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
    import asyncio
    from datetime import timedelta

    from sqlalchemy.exc import SQLAlchemyError

    from app.services.gc import reconcile
    from app.services.idempotency import expired_keys
    from app.services.runtime import open_runtime
    from app.storage import StoreError

    settings = _settings()

    async def run() -> tuple[GcReport, int]:
        async with open_runtime(settings) as runtime:
            report = await reconcile(
                sessions=runtime.sessions,
                storage=runtime.storage,
                grace=timedelta(seconds=grace),
                apply=apply,
            )
            return report, await expired_keys(sessions=runtime.sessions, apply=apply)

    try:
        report, expired = asyncio.run(run())
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except StoreError as exc:
        typer.echo(f"error: the storage cannot be used: {exc}", err=True)
        raise typer.Exit(1) from None
    except (SQLAlchemyError, OSError) as exc:
        typer.echo(f"error: the database cannot be used: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    _print_gc_report(report, settings, show_orphans=show)
    typer.echo(f"expired Idempotency-Keys {'deleted' if apply else 'found'}: {expired}")
    if not report.clean:
        raise typer.Exit(1)


def _print_gc_report(report: GcReport, settings: Settings, *, show_orphans: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    where = (
        f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
        if settings.storage == "s3"
        else str(settings.media_path)
    )
    console = Console(highlight=False, soft_wrap=True)
    mode = "apply" if report.applied else "dry run"
    console.print(f"gc ({mode}) on {settings.storage} storage {where}")
    console.print(f"grace period: {int(report.grace.total_seconds())} s")
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("")
    table.add_column("objects", justify="right")
    table.add_column("bytes", justify="right")
    rows = [
        ("scanned", report.scanned.count, report.scanned.bytes),
        ("referenced", report.referenced.count, report.referenced.bytes),
        ("recent, kept (within grace)", report.recent.count, report.recent.bytes),
        ("orphans", len(report.orphans), report.orphan_bytes),
        ("unfinished writes", len(report.partial), report.partial_bytes),
    ]
    if report.applied:
        rows.append(("deleted", report.deleted.count, report.deleted.bytes))
    for label, count, size in rows:
        table.add_row(label, f"{count:,}", f"{size:,}")
    console.print(table)
    if show_orphans:
        for obj in report.orphans:
            console.print(f"orphan {obj.key} {obj.size} bytes {obj.modified.isoformat()}")
        for obj in report.partial:
            console.print(f"unfinished {obj.key} {obj.size} bytes {obj.modified.isoformat()}")
    for item in report.missing:
        console.print(f"missing {item.key} (avatar of user {item.user_id!r})")
    console.print(f"avatars with missing objects: {len(report.missing)}")
    if report.failed:
        console.print(f"orphans that could not be deleted: {len(report.failed)}")
    leftovers = len(report.orphans) + len(report.partial)
    if not report.applied and leftovers:
        console.print(f"dry run: nothing deleted; run with --apply to delete {leftovers}")


# Bulk work: import a folder, reprocess every avatar, process local files. Progress bars and
# notes go to stderr; stdout carries the summary only (a table, or JSON with --json).

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the summary as JSON on stdout (no table).")
]
INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C
TABLE_NAMES = 5  # names shown per reason in a summary table; every one gets a line below it


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _run_bulk(work: Callable[[], Coroutine[Any, Any, T]], *, interrupted: Callable[[], str]) -> T:
    """Run ``work`` with the errors every bulk command shares: one line, never a traceback."""
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from app.storage import StoreError

    try:
        return asyncio.run(work())
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {interrupted()}", err=True)
        raise typer.Exit(INTERRUPTED) from None
    except ConfigurationError as exc:
        raise _fail(str(exc), 2) from None
    except StoreError as exc:
        raise _fail(f"the storage cannot be used: {exc}", 1) from None
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(f"the database cannot be used: {_database_error(exc)}", 1) from None


def _database_error(exc: BaseException) -> str:
    """One line: the driver's own error when SQLAlchemy wraps one (its text spans lines)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    reason = f"{type(cause).__name__}: {text[0] if text else ''}"
    if "avatars" in reason and ("no such table" in reason or "does not exist" in reason):
        reason += " (run `avatar-service migrate` first)"
    return reason


class _ProgressBar:
    """A Rich progress bar on stderr; its line appears once the total is known (``start``), so
    a run that fails before any work shows only its error."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.label = label
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task: TaskID | None = None

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def start(self, total: int) -> None:
        self.task = self.progress.add_task(self.label, total=total)
        self.progress.start()

    def advance(self, _outcome: object = None) -> None:
        if self.task is not None:
            self.progress.advance(self.task)


def _stdout() -> Console:
    from rich.console import Console

    # File names and user ids are printed as they are: "[b]" or ":x:" in one is not markup.
    return Console(highlight=False, soft_wrap=True, markup=False, emoji=False)


def _print_json(data: object) -> None:
    import json

    typer.echo(json.dumps(data, indent=2))


def _rejects_table(title: str, by_code: dict[str, list[str]], what: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, box=None, pad_edge=False)
    table.add_column("code")
    table.add_column(what, justify="right")
    table.add_column("names")
    for code, names in by_code.items():
        shown = ", ".join(names[:TABLE_NAMES])
        if len(names) > TABLE_NAMES:
            shown += f" and {len(names) - TABLE_NAMES:,} more"
        table.add_row(code, f"{len(names):,}", shown)
    return table


def _counts_table(rows: list[tuple[str, int]], what: str) -> Table:
    from rich.table import Table

    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("")
    table.add_column(what, justify="right")
    for label, count in rows:
        table.add_row(label, f"{count:,}")
    return table


def _outcomes_json(outcomes: list[Outcome], name: str) -> list[dict[str, str | None]]:
    return [{name: o.name, "code": o.code, "detail": o.detail} for o in outcomes]


@cli.command("import")
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
        raise _fail(
            "say how files map to users: --user-from-filename (alice.jpg becomes the avatar "
            "of user 'alice')",
            2,
        )
    settings = _settings()
    try:
        plan = plan_import(directory)
    except OSError as exc:
        raise _fail(str(exc), 2) from None
    done: list[Outcome] = []

    async def work() -> ImportReport:
        async with open_runtime(settings) as runtime:
            with _ProgressBar("import (dry run)" if dry_run else "import") as bar:

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

    report = _run_bulk(
        work,
        interrupted=lambda: (
            f"{sum(o.ok for o in done)} of {len(plan.files)} files done; run again with "
            "--skip-existing to continue"
        ),
    )
    if as_json:
        _print_json(
            {
                "dry_run": report.dry_run,
                "imported": [{"file": o.name, "user_id": o.detail} for o in report.imported],
                "skipped": [{"file": o.name, "detail": o.detail} for o in report.skipped],
                "rejected": _outcomes_json(report.rejected, "file"),
                "rejects_by_code": report.rejects_by_code,
                "ignored": report.ignored,
            }
        )
    else:
        console = _stdout()
        console.print(
            f"import from {directory}" + (" (dry run: nothing stored)" if dry_run else "")
        )
        console.print(
            _counts_table(
                [
                    ("would be imported" if dry_run else "imported", len(report.imported)),
                    ("skipped (has an avatar)", len(report.skipped)),
                    ("rejected", len(report.rejected)),
                    ("ignored (hidden files, folders)", report.ignored),
                ],
                "files",
            )
        )
        if report.rejected:
            console.print(_rejects_table("rejects by reason", report.rejects_by_code, "files"))
            for outcome in report.rejected:
                console.print(f"rejected {outcome.name}: {outcome.code}: {outcome.detail}")
    if report.rejected:
        raise typer.Exit(1)


@cli.command()
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
    import errno
    import os

    from app.services.bulk import Checkpoint, CheckpointMismatch, reprocess_avatars, run_fingerprint
    from app.services.runtime import open_runtime

    settings = _settings()
    path = checkpoint or settings.data_dir / "reprocess-checkpoint.json"
    state: list[Checkpoint] = []

    async def work() -> ReprocessReport:
        async with open_runtime(settings) as runtime:
            fingerprint = run_fingerprint(runtime, auto_crop=auto_crop)
            if restart:
                saved = Checkpoint(path, fingerprint)
            else:
                try:
                    saved = Checkpoint.load(path, fingerprint)
                except CheckpointMismatch as exc:
                    raise ConfigurationError(str(exc)) from None
            try:  # fail now, not after the first user, if the checkpoint cannot be written
                path.parent.mkdir(parents=True, exist_ok=True)
                if not os.access(path.parent, os.W_OK):
                    raise PermissionError(errno.EACCES, "permission denied")
            except OSError as exc:
                raise ConfigurationError(
                    f"the checkpoint {path} cannot be written: {exc.strerror}"
                ) from None
            state.append(saved)
            if saved.started:
                typer.echo(
                    f"resuming after user {saved.after!r}"
                    + (f", {len(saved.failed)} failed users first" if saved.failed else ""),
                    err=True,
                )
            with _ProgressBar("reprocess --auto-crop" if auto_crop else "reprocess") as bar:
                return await reprocess_avatars(
                    runtime, saved, auto_crop=auto_crop, on_start=bar.start, on_done=bar.advance
                )

    def interrupted() -> str:
        after = state[0].after if state else None
        where = f"after user {after!r}" if after is not None else "from the first user"
        again = "reprocess --auto-crop" if auto_crop else "reprocess"
        return f"run `avatar-service {again}` again to continue {where}"

    report = _run_bulk(work, interrupted=interrupted)
    kept = state[0].path if state and state[0].failed else None
    if as_json:
        _print_json(
            {
                "resumed_after": report.resumed_after,
                "done": len(report.done),
                "skipped": _outcomes_json(report.skipped, "user_id"),
                "failed": _outcomes_json(report.failed, "user_id"),
                "checkpoint": str(kept) if kept else None,
            }
        )
    else:
        console = _stdout()
        console.print(
            _counts_table(
                [
                    ("reprocessed", len(report.done)),
                    ("skipped (gone, replaced meanwhile, or a client's crop)", len(report.skipped)),
                    ("failed", len(report.failed)),
                ],
                "users",
            )
        )
        for outcome in report.failed:
            console.print(f"failed {outcome.name!r}: {outcome.code}: {outcome.detail}")
        if kept:
            console.print(f"run again to retry the failed users (checkpoint: {kept})")
    if report.failed:
        raise typer.Exit(1)


@cli.command()
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
        raise _fail(f"--crop: {exc.detail}", 2) from None
    settings = _settings()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"the output folder {out} cannot be made: {exc.strerror}", 2) from None
    pool = worker_pool(settings, queue_size=0)

    async def work() -> ProcessReport:
        with _ProgressBar("process") as bar:
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
        report = _run_bulk(work, interrupted=lambda: "the files done so far are in place")
    finally:
        pool.shutdown()
    if as_json:
        _print_json(
            {
                "processed": [
                    {"file": item.name, "folder": str(item.folder), **item.report}
                    for item in report.processed
                ],
                "rejected": _outcomes_json(report.rejected, "file"),
                "rejects_by_code": report.rejects_by_code,
            }
        )
    else:
        from rich.table import Table

        console = _stdout()
        table = Table(show_edge=False, box=None, pad_edge=False)
        for column in ("file", "size", "variants", "bytes", "orientation", "removed"):
            table.add_column(column, justify="right" if column == "bytes" else "left")
        for item in report.processed:
            variants = item.report["variants"]
            table.add_row(
                item.name,
                f"{item.report['width']}x{item.report['height']}",
                str(len(variants)),
                f"{sum(v['bytes'] for v in variants):,}",
                str(item.report["orientation_applied"]),
                ", ".join(item.report["metadata_removed"]) or "-",
            )
        console.print(f"processed {len(report.processed)} of {len(files)} into {out}")
        if report.processed:
            console.print(table)
        if report.rejected:
            console.print(_rejects_table("rejects by reason", report.rejects_by_code, "files"))
            for outcome in report.rejected:
                console.print(f"rejected {outcome.name}: {outcome.code}: {outcome.detail}")
    if report.rejected:
        raise typer.Exit(1)


from app.cli_events import events_cli  # noqa: E402 (the group registers its commands)

cli.add_typer(events_cli, name="events")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
