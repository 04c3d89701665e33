"""The one mapping from an error to its line and exit code (app/cli/exits.py), and that every
command that reads the database uses it: an unmigrated database says what to do."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import typer
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from app.cli import cli, exits
from app.core.config import ConfigurationError
from app.storage import StoreError
from tests.conftest import make_settings
from tests.services.support import settings_env


def wrapped(driver_error: Exception) -> OperationalError:
    """A driver error as SQLAlchemy raises it: its text spans lines (SQL, a link)."""
    return OperationalError("SELECT avatars.user_id\nFROM avatars", {}, driver_error)


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (ConfigurationError("AVATAR_PORT: not a number"), 2, "AVATAR_PORT: not a number"),
        (StoreError("the bucket refused"), 1, "the storage cannot be used: the bucket refused"),
        (
            wrapped(sqlite3.OperationalError("database is locked")),
            1,
            "the database cannot be used: OperationalError: database is locked",
        ),
        (
            ConnectionRefusedError(111, "Connect call failed"),
            1,
            "the database cannot be used: ConnectionRefusedError: [Errno 111] Connect call failed",
        ),
    ],
)
def test_each_error_every_command_meets_has_one_line_and_its_code(
    error: Exception, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as exited, exits.handled():
        raise error
    assert exited.value.exit_code == code
    captured = capsys.readouterr()
    assert captured.err == f"error: {line}\n" and captured.out == ""


@pytest.mark.parametrize(
    "reason",
    ["no such table: avatars", 'relation "outbox_events" does not exist'],
)
def test_a_missing_table_says_run_migrate_first(reason: str) -> None:
    line = exits.database_error(wrapped(sqlite3.OperationalError(reason)))
    assert line == f"OperationalError: {reason} (run `avatar-service migrate` first)"


def test_a_missing_database_is_not_mistaken_for_a_missing_schema() -> None:
    line = exits.database_error(wrapped(sqlite3.OperationalError('database "x" does not exist')))
    assert "migrate" not in line


def test_other_errors_are_not_mapped(capsys: pytest.CaptureFixture[str]) -> None:
    assert exits.exit_for(ValueError("a bug")) is None
    with pytest.raises(ValueError, match="a bug"), exits.handled():
        raise ValueError("a bug")
    assert capsys.readouterr().err == ""


def test_ctrl_c_exits_130_and_says_how_to_continue(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited, exits.handled(interrupted=lambda: "run it again"):
        raise KeyboardInterrupt
    assert exited.value.exit_code == exits.INTERRUPTED == 130
    assert capsys.readouterr().err == "interrupted: run it again\n"
    # A command with nothing to say about continuing lets Ctrl-C through.
    with pytest.raises(KeyboardInterrupt), exits.handled():
        raise KeyboardInterrupt


def test_run_maps_what_the_coroutine_raises(capsys: pytest.CaptureFixture[str]) -> None:
    async def work() -> int:
        raise StoreError("gone")

    async def fine() -> int:
        return 7

    with pytest.raises(typer.Exit) as exited:
        exits.run(work)
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err == "error: the storage cannot be used: gone\n"
    assert exits.run(fine) == 7


def test_invalid_settings_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("AVATAR_PORT", "not-a-port")
    with pytest.raises(typer.Exit) as exited:
        exits.settings()
    assert exited.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "port" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["gc"],
        ["reprocess"],
        ["import", "{folder}", "--user-from-filename"],
        ["events", "list"],
        ["events", "replay", "--dead"],
    ],
    ids=lambda args: " ".join(a for a in args if not a.startswith("{")),
)
def test_every_command_on_an_unmigrated_database_says_run_migrate_first(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    empty = f"sqlite+aiosqlite:///{tmp_path / 'never-migrated.db'}"
    settings = make_settings(tmp_path, database_url=empty, storage="local")
    (tmp_path / "in").mkdir()
    args = [arg.replace("{folder}", str(tmp_path / "in")) for arg in args]
    result = CliRunner().invoke(cli, args, env=settings_env(settings))
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the database cannot be used: ")
    assert lines[0].endswith("(run `avatar-service migrate` first)")
