"""The commands that run or prepare the service: ``serve``, ``migrate``, ``token``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from app.cli import exits

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.core.config import Settings

# The app uvicorn builds in each process when there are several (it cannot pickle one).
APP_FACTORY = "app.main:create_served_app"


def event_loop(processes: int | None) -> str:
    """The event loop uvicorn runs, by name: uvloop, which in one process accepts new
    connections in batches (app/api/eventloop.py); several processes share their socket by
    uvloop's one accept a poll."""
    return "app.api.eventloop:new_event_loop" if (processes or 1) == 1 else "uvloop"


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
    from app.core.security import is_loopback_address

    settings = exits.settings()
    address = host or settings.host
    if settings.dev_tokens and not is_loopback_address(address):
        raise exits.fail(
            f"AVATAR_DEV_TOKENS=true is refused on {address}, which is not a loopback "
            "address: development tokens let anyone sign in as anyone",
            exits.USAGE,
        )
    # The application is imported once the settings are known to be servable: a refusal
    # above answers at once, without loading the web framework and the imaging stack.
    import asyncio

    from app.core.logging import configure_logging
    from app.main import create_app
    from app.services.runtime import check_storage, close_storage
    from app.storage import build_storage

    # The storage is built and checked here, before uvicorn runs the lifespan, so that a
    # missing bucket or refused credentials end in one line instead of uvicorn's traceback.
    with exits.handled():
        storage = build_storage(settings)
        try:
            asyncio.run(check_storage(storage))
            app = create_app(settings, storage=storage, serving=True)
        except BaseException:
            close_storage(storage)
            raise
    configure_logging(settings.log_level)
    port = settings.port if port is None else port
    count = processes or settings.processes
    if count > 1:
        # Each process builds its own app (and storage client) from the same settings.
        close_storage(storage)
        _run_uvicorn(APP_FACTORY, settings, address, port, processes=count)
        return
    try:
        _run_uvicorn(app, settings, address, port)
    finally:
        close_storage(storage)


def _run_uvicorn(
    app: FastAPI | str, settings: Settings, host: str, port: int, *, processes: int | None = None
) -> None:
    """Serve ``app`` (or, in ``processes`` processes, the app its factory's import path
    builds) until SIGTERM."""
    import uvicorn

    uvicorn.run(
        app,
        factory=isinstance(app, str),
        workers=processes,
        host=host,
        port=port,
        proxy_headers=True,
        server_header=False,
        access_log=False,  # one JSON line per request comes from the app
        log_config=None,
        # uvicorn annotates this `int | None` but only hands it to asyncio.wait_for, which takes
        # any number of seconds; AVATAR_SHUTDOWN_TIMEOUT may be fractional.
        timeout_graceful_shutdown=settings.shutdown_timeout,  # type: ignore[arg-type]
        # httptools with the request head bounded in size and time (app/api/protocol.py), on
        # uvloop (by name: a missing uvloop fails here instead of serving slower).
        http="app.api.protocol:BoundedHttpToolsProtocol",
        loop=event_loop(processes),
    )


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the database schema (Alembic upgrade to head)."""
    from app.db.migrate import upgrade

    settings = exits.settings()
    try:
        upgrade(settings.database_url, revision)
    except Exception as exc:  # Alembic's own errors too (an unknown revision)
        raise exits.fail(f"migration failed: {type(exc).__name__}: {exc}", exits.FAILED) from None
    typer.echo(f"database at revision {revision}", err=True)


def token(
    user_id: Annotated[str, typer.Argument(help="The user id (the token's `sub`).")],
    ttl: Annotated[
        int | None, typer.Option(help="Lifetime in seconds (default: AVATAR_TOKEN_TTL_SECONDS).")
    ] = None,
) -> None:
    """Print a bearer token the server with the same configuration accepts."""
    from app.core.security import create_token

    settings = exits.settings()
    with exits.handled():
        try:
            minted = create_token(settings, user_id, ttl_seconds=ttl)
        except ValueError as exc:  # a user id or lifetime a token cannot carry
            raise exits.fail(str(exc), exits.USAGE) from None
    typer.echo(minted)
