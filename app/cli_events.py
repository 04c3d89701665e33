"""``avatar-service events``: list the outbox, send events again, run a dedicated dispatcher."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer

from app.core.config import Settings

T = TypeVar("T")

events_cli = typer.Typer(
    help="The event outbox: webhooks and CDN purges.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


class Status(StrEnum):
    unrouted = "unrouted"
    pending = "pending"
    delivered = "delivered"
    dead = "dead"


def _settings() -> Settings:
    """The settings, or exit 2 with the reason (as every command does)."""
    from app.cli import _settings as cli_settings  # app.cli registers this group at its end

    return cli_settings()


def _with_sessions(settings: Settings, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Run ``work(sessions)`` on the configured database; its errors are one line, exit 1."""
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from app.db.session import create_engine, create_sessionmaker

    async def run() -> T:
        engine = create_engine(settings.database_url, timeout=settings.database_timeout)
        try:
            return await work(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (SQLAlchemyError, OSError) as exc:
        from app.cli import _database_error

        reason = _database_error(exc)
        if "outbox_" in reason and ("no such table" in reason or "does not exist" in reason):
            reason += " (run `avatar-service migrate` first)"
        typer.echo(f"error: the database cannot be used: {reason}", err=True)
        raise typer.Exit(1) from None


@events_cli.command("list")
def list_events(
    status: Annotated[
        Status | None, typer.Option(help="Only deliveries in this state.", show_default=False)
    ] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most rows shown.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout, no table.")] = False,
) -> None:
    """Show the newest events, one row per delivery: target, status, attempts, next attempt
    and the last error. Exits 1 when the database cannot be used."""
    from app.services.outbox import list_deliveries

    settings = _settings()
    rows = _with_sessions(
        settings,
        lambda sessions: list_deliveries(
            sessions, status=status.value if status else None, user_id=user, limit=limit
        ),
    )
    if as_json:
        import json

        typer.echo(
            json.dumps(
                [
                    {
                        "event_id": row.event_id,
                        "type": row.type,
                        "user_id": row.user_id,
                        "occurred_at": _when(row.occurred_at),
                        "target": row.target,
                        "status": row.status,
                        "attempts": row.attempts,
                        "next_attempt_at": _when(row.next_attempt_at),
                        "delivered_at": _when(row.delivered_at),
                        "last_error": row.last_error,
                    }
                    for row in rows
                ],
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("event", "type", "user", "at", "target", "status", "tries", "next", "error"):
        table.add_column(column, justify="right" if column == "tries" else "left")
    for row in rows:
        table.add_row(
            row.event_id,
            row.type,
            row.user_id,
            _when(row.occurred_at),
            row.target or "-",
            row.status,
            str(row.attempts),
            _when(row.next_attempt_at) if row.status == "pending" else "-",
            row.last_error or "",
        )
    # Ids and errors are printed whole, for copying and grepping, however narrow the terminal.
    wide = max(Console().width, 240)
    console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False, width=wide)
    console.print(table)
    console.print(f"{len(rows)} rows" + (" (--limit reached)" if len(rows) == limit else ""))


def _when(moment: Any) -> str | None:
    from app.services.outbox import as_utc

    return as_utc(moment).isoformat(timespec="seconds") if moment is not None else None


@events_cli.command()
def replay(
    event_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="EVENT_ID...", help="Events to send again.", show_default=False),
    ] = None,
    dead: Annotated[
        bool, typer.Option("--dead", help="Every dead delivery, from its first attempt.")
    ] = False,
    target: Annotated[
        str | None,
        typer.Option(
            help="Only this target (`webhook:<name>` or `cdn-purge`).", show_default=False
        ),
    ] = None,
) -> None:
    """Send events again, with the same event ids (receivers ignore what they already have).

    Given EVENT_IDs go to every configured target that wants them (or to --target); --dead
    revives every dead delivery. The dispatchers send them on their next round. Exits 1 when
    an event is unknown or the database cannot be used, 2 on an unknown target.
    """
    from app.services.outbox import list_deliveries, missing_events
    from app.services.outbox import replay as replay_events

    ids = event_ids or []
    if bool(ids) == dead:
        typer.echo("error: give EVENT_IDs or --dead (one of them)", err=True)
        raise typer.Exit(2)
    settings = _settings()

    async def work(sessions: Any) -> tuple[int, list[str]]:
        unknown = missing_events(await list_deliveries(sessions, event_ids=ids, limit=10_000), ids)
        count = await replay_events(sessions, settings, event_ids=ids, dead=dead, target=target)
        return count, unknown

    try:
        count, unknown = _with_sessions(settings, work)
    except KeyError:
        typer.echo(f"error: no target {target!r} is configured", err=True)
        raise typer.Exit(2) from None
    for event_id in unknown:
        typer.echo(f"unknown event {event_id}", err=True)
    typer.echo(f"{count} deliveries due now")
    if unknown:
        raise typer.Exit(1)


@events_cli.command()
def work(
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port.", show_default=False),
    ] = None,
) -> None:
    """Run a dedicated dispatcher until SIGTERM or Ctrl-C: claim due deliveries and send them.

    Any number may run against one PostgreSQL database (claims skip each other's rows); on
    SQLite one is enough. Stops with exit 0 after giving back what it had in flight.
    """
    import asyncio
    import signal

    from app.core.logging import configure_logging
    from app.core.metrics import Metrics
    from app.db.session import create_engine, create_sessionmaker
    from app.services.outbox import Dispatcher

    settings = _settings()
    configure_logging(settings.log_level)
    metrics = Metrics()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.host, registry=metrics.registry)

    async def run() -> None:
        engine = create_engine(settings.database_url, timeout=settings.database_timeout)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            dispatcher = Dispatcher(
                sessions=create_sessionmaker(engine), settings=settings, metrics=metrics
            )
            await dispatcher.run(stop)
        finally:
            await engine.dispose()

    typer.echo(
        f"dispatching events to {len(settings.webhooks)} webhook endpoints"
        + (" and the CDN purge" if settings.cdn_purge else ""),
        err=True,
    )
    asyncio.run(run())
