"""``avatar-service``: serve, migrate, mint development tokens and reconcile the storage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from app.core.config import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from app.services.gc import GcReport

cli = typer.Typer(
    name="avatar-service",
    help="Avatar and image-upload service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    from app.main import check_storage, close_storage, create_app
    from app.storage import build_storage

    settings = _settings()
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
        "host": host or settings.host,
        "port": settings.port if port is None else port,
        "proxy_headers": True,
        "server_header": False,
        "access_log": False,  # one JSON line per request comes from the app
        "log_config": None,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
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
            help="Seconds an unreferenced object is left alone, so uploads in flight are safe.",
        ),
    ] = 3600,
    show: Annotated[bool, typer.Option("--list", help="Print the key of every orphan.")] = False,
) -> None:
    """Find stored objects no avatar references and avatars whose objects are missing.

    Exits 0 when all is well; 1 when an avatar points at a missing object, a deletion failed,
    or the database or the store failed during the run; 2 when the configuration is invalid or
    the store cannot be used at all (the same check as at startup).
    """
    import asyncio
    from datetime import timedelta

    from sqlalchemy.exc import SQLAlchemyError

    from app.db.session import create_engine, create_sessionmaker
    from app.main import check_storage, close_storage
    from app.services.gc import reconcile
    from app.storage import StorageUnavailable, build_storage

    settings = _settings()

    async def run() -> GcReport:
        storage = build_storage(settings)
        engine = create_engine(settings.database_url)
        try:
            await check_storage(storage)
            return await reconcile(
                sessions=create_sessionmaker(engine),
                storage=storage,
                grace=timedelta(seconds=grace),
                apply=apply,
            )
        finally:
            await engine.dispose()
            close_storage(storage)

    try:
        report = asyncio.run(run())
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except StorageUnavailable as exc:
        typer.echo(f"error: the storage cannot be used: {exc}", err=True)
        raise typer.Exit(1) from None
    except (SQLAlchemyError, OSError) as exc:
        typer.echo(f"error: the database cannot be used: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    _print_gc_report(report, settings, show_orphans=show)
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
    ]
    if report.applied:
        rows.append(("deleted", report.deleted.count, report.deleted.bytes))
    for label, count, size in rows:
        table.add_row(label, f"{count:,}", f"{size:,}")
    console.print(table)
    if show_orphans:
        for obj in report.orphans:
            console.print(f"orphan {obj.key} {obj.size} bytes {obj.modified.isoformat()}")
    for item in report.missing:
        console.print(f"missing {item.key} (avatar of user {item.user_id!r})")
    console.print(f"avatars with missing objects: {len(report.missing)}")
    if report.failed:
        console.print(f"orphans that could not be deleted: {len(report.failed)}")
    if not report.applied and report.orphans:
        console.print(f"dry run: nothing deleted; run with --apply to delete {len(report.orphans)}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
