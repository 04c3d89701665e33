"""``avatar-service``: serve, migrate, mint development tokens, reconcile the storage, import,
reprocess or process images in bulk, and look after the event outbox.

One module per job: ``server`` (serve, migrate, token), ``maintenance`` (gc and the bulk
commands), ``events`` (the ``events`` group); ``render`` prints what they report and ``exits``
maps every error to its exit code. Commands import their heavy dependencies when they run, so
``--help`` stays quick.
"""

from __future__ import annotations

import typer

from app.cli import events, maintenance, server

__all__ = ["cli", "main"]

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
# In the order `--help` lists them.
cli.command()(server.serve)
cli.command()(server.migrate)
cli.command()(server.token)
cli.command()(maintenance.gc)
cli.command("import")(maintenance.import_)
cli.command()(maintenance.reprocess)
cli.command()(maintenance.process)
cli.add_typer(events.events_cli, name="events")


def main() -> None:
    cli()
