"""How every command ends when something goes wrong: one line on stderr, never a traceback, and
an exit code that means the same in every command.

- 0 (``OK``): all went well.
- 1 (``FAILED``): some of the work failed (a file rejected, a user failed, an avatar missing
  its objects), or the database or the store failed during the run.
- 2 (``USAGE``): the command cannot run: invalid configuration or arguments, a store that
  cannot be used at all.
- 130 (``INTERRUPTED``): stopped by Ctrl-C (the shell's code for it).

Commands refuse their own arguments with ``fail(message, USAGE)``; the errors any of them can
meet (the configuration, the store, the database, Ctrl-C) are mapped by ``handled`` and ``run``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from app.core.config import Settings

T = TypeVar("T")

OK = 0
FAILED = 1
USAGE = 2
INTERRUPTED = 130

# A table the database does not have: the schema was never migrated (SQLite, PostgreSQL).
_MISSING_TABLE = re.compile(r'no such table: \w+|relation "\w+" does not exist')


def fail(message: str, code: int) -> typer.Exit:
    """Print ``error: message`` on stderr; the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def exit_for(exc: BaseException) -> typer.Exit | None:
    """The exit for an error every command can meet, its line printed; None for any other."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.core.config import ConfigurationError
    from app.storage import StoreError

    if isinstance(exc, ConfigurationError):
        return fail(str(exc), USAGE)
    if isinstance(exc, StoreError):  # an OSError: before the database's
        return fail(f"the storage cannot be used: {exc}", FAILED)
    if isinstance(exc, SQLAlchemyError | OSError):  # drivers raise OSError on connecting
        return fail(f"the database cannot be used: {database_error(exc)}", FAILED)
    return None


def database_error(exc: BaseException) -> str:
    """One line: the driver's own error when SQLAlchemy wraps one (its text spans lines), and
    what to do when the schema is missing."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    reason = f"{type(cause).__name__}: {text[0] if text else ''}"
    if _MISSING_TABLE.search(reason):
        reason += " (run `avatar-service migrate` first)"
    return reason


@contextmanager
def handled(*, interrupted: Callable[[], str] | None = None) -> Iterator[None]:
    """Map what the block raises with ``exit_for``. With ``interrupted``, Ctrl-C prints
    ``interrupted: <what it returns>`` (how to continue) and exits 130."""
    try:
        yield
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        typer.echo(f"interrupted: {interrupted()}", err=True)
        raise typer.Exit(INTERRUPTED) from None
    except Exception as exc:
        exit_ = exit_for(exc)
        if exit_ is None:
            raise
        raise exit_ from None


def run(
    work: Callable[[], Coroutine[Any, Any, T]], *, interrupted: Callable[[], str] | None = None
) -> T:
    """``asyncio.run(work())`` with its errors mapped (``handled``)."""
    import asyncio

    with handled(interrupted=interrupted):
        return asyncio.run(work())


def settings() -> Settings:
    """The settings, or exit 2 with the reason."""
    from app.core.config import ConfigurationError, load_settings

    try:
        return load_settings()
    except ConfigurationError as exc:
        raise fail(str(exc), USAGE) from None
