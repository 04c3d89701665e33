"""``avatar-service events``: list the outbox, send events again, run a dedicated dispatcher."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from app.cli import exits, render

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from app.core.config import Settings

    Sessions = async_sessionmaker[AsyncSession]

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


def _with_sessions(settings: Settings, work: Callable[[Sessions], Coroutine[Any, Any, T]]) -> T:
    """Run ``work(sessions)`` on the configured database, its errors mapped (exit 1)."""
    from app.db.session import create_engine, create_sessionmaker

    async def run() -> T:
        engine = create_engine(settings.database_url, timeout=settings.database_timeout)
        try:
            return await work(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    return exits.run(run)


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

    settings = exits.settings()
    rows = _with_sessions(
        settings,
        lambda sessions: list_deliveries(
            sessions, status=status.value if status else None, user_id=user, limit=limit
        ),
    )
    render.deliveries(rows, limit=limit, as_json=as_json)


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
        raise exits.fail("give EVENT_IDs or --dead (one of them)", exits.USAGE)
    settings = exits.settings()

    async def work(sessions: Sessions) -> tuple[int, list[str]]:
        unknown = missing_events(await list_deliveries(sessions, event_ids=ids, limit=10_000), ids)
        count = await replay_events(sessions, settings, event_ids=ids, dead=dead, target=target)
        return count, unknown

    try:
        count, unknown = _with_sessions(settings, work)
    except KeyError:
        raise exits.fail(f"no target {target!r} is configured", exits.USAGE) from None
    for event_id in unknown:
        typer.echo(f"unknown event {event_id}", err=True)
    typer.echo(f"{count} deliveries due now")
    if unknown:
        raise typer.Exit(exits.FAILED)


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

    settings = exits.settings()
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
    exits.run(run)
