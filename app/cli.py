"""``avatar-service``: serve, migrate and mint development tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from app.core.config import ConfigurationError, Settings, load_settings

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
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the HTTP API (run `migrate` first)."""
    import uvicorn

    from app.main import create_app

    settings = _settings()
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(app, host=host, port=port, proxy_headers=True, server_header=False)


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


def main() -> None:
    cli()
