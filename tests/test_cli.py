"""The console script as a person runs it: subprocesses, a real server, curl."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import missing
from tests.images import jpeg_with_metadata

CLI = [sys.executable, "-m", "app.cli"]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    env.update({"AVATAR_DATA_DIR": str(tmp_path / "data"), **extra})
    return env


def run_cli(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=tmp_path,
        env=cli_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_help_lists_the_commands(tmp_path) -> None:
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("serve", "migrate", "token"):
        assert command in result.stdout


def test_token_prints_only_the_token(tmp_path) -> None:
    result = run_cli(tmp_path, "token", "alice")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].count(".") == 2


def test_token_refused_in_production_without_secret(tmp_path) -> None:
    result = run_cli(tmp_path, "token", "alice", AVATAR_ENV="production")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "AVATAR_JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_to_start_in_production_without_secret(tmp_path) -> None:
    result = run_cli(tmp_path, "serve", "--port", str(free_port()), AVATAR_ENV="production")
    assert result.returncode == 2
    assert "AVATAR_JWT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_creates_the_schema(tmp_path) -> None:
    result = run_cli(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "avatar.db").is_file()
    again = run_cli(tmp_path, "migrate")
    assert again.returncode == 0, again.stderr


def test_migrations_are_reversible(tmp_path) -> None:
    import sqlite3

    from app.db.migrate import downgrade, upgrade

    path = tmp_path / "avatar.db"
    url = f"sqlite+aiosqlite:///{path}"

    def tables() -> set[str]:
        with sqlite3.connect(path) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {name for (name,) in rows}

    upgrade(url)
    assert "avatars" in tables()
    downgrade(url, "base")
    assert "avatars" not in tables()
    upgrade(url)
    assert "avatars" in tables()


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path]]:
    assert run_cli(tmp_path, "migrate").returncode == 0
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115  (closed in finally)
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not start")
        yield base, tmp_path
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        missing("curl is not installed")
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def test_readme_walkthrough_with_curl(server) -> None:
    """The README's quick start, step by step, against `avatar-service serve`."""
    base, cwd = server
    photo = cwd / "photo.jpg"
    photo.write_bytes(jpeg_with_metadata((1200, 900), orientation=6))
    token = run_cli(cwd, "token", "alice").stdout.strip()

    uploaded = curl(
        "-H", f"Authorization: Bearer {token}", "-F", f"file=@{photo}", f"{base}/users/me/avatar"
    )
    document = json.loads(uploaded.stdout)
    assert (document["width"], document["height"]) == (900, 1200)
    assert document["avatar_url"].startswith(f"{base}/media/")

    public = json.loads(curl(f"{base}/users/alice/avatar").stdout)
    assert public == document

    fetched = curl(
        "-o",
        str(cwd / "avatar.webp"),
        "-w",
        "%{http_code} %{content_type}",
        document["avatar_thumb_url"],
    )
    assert fetched.stdout == "200 image/webp"
    assert (cwd / "avatar.webp").read_bytes()[8:12] == b"WEBP"

    deleted = curl(
        "-X",
        "DELETE",
        "-H",
        f"Authorization: Bearer {token}",
        "-w",
        "%{http_code}",
        f"{base}/users/me/avatar",
    )
    assert deleted.stdout == "204"
    gone = curl("-w", "%{http_code}", "-o", "/dev/null", document["avatar_url"])
    assert gone.stdout == "404"
