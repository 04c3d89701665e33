"""The assembled ``avatar-service`` command (app/cli/__init__.py): every command and option is
there, through the installed script and through Typer's runner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.live import run_cli

COMMAND_OPTIONS = {
    "serve": ["--host", "--port", "--processes"],
    "migrate": ["REVISION"],
    "token": ["USER_ID", "--ttl"],
    "gc": ["--apply", "--grace", "--list"],
    "reprocess": ["--checkpoint", "--restart", "--auto-crop", "--json", "AVATAR_DATA_DIR"],
    "import": ["DIR", "--user-from-filename", "--dry-run", "--skip-existing", "--json"],
    "process": ["FILE", "--out", "--crop", "--json"],
}


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in COMMAND_OPTIONS:
        assert f" {command} " in result.output, command


@pytest.mark.parametrize("command", list(COMMAND_OPTIONS))
def test_every_command_has_help_with_its_options(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    for option in COMMAND_OPTIONS[command]:  # metavars (upper case) are shown in either case
        shown = result.output.upper() if option.isupper() else result.output
        assert option in shown, (command, option)


@pytest.mark.server
def test_help_lists_the_commands(tmp_path) -> None:
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("serve", "migrate", "token"):
        assert command in result.stdout
