"""A real server process (`python -m app.cli serve`) on a free loopback port, for tests that
need one: the CLI walk-through, graceful shutdown, the browser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    env.update({"AVATAR_DATA_DIR": str(tmp_path / "data"), "AVATAR_RATE_LIMIT": "", **extra})
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


@dataclass
class LiveServer:
    base_url: str
    cwd: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def token(self, user_id: str) -> str:
        return run_cli(self.cwd, "token", user_id).stdout.strip()


@contextmanager
def live_server(tmp_path: Path, **env: str) -> Iterator[LiveServer]:
    migrated = run_cli(tmp_path, "migrate", **env)
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*CLI, "serve", "--port", str(port)],
            cwd=tmp_path,
            env=cli_env(tmp_path, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = LiveServer(f"http://127.0.0.1:{port}", tmp_path, process, log_path)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start:\n" + log_path.read_text())
                time.sleep(0.1)
            yield server
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response on ``sock`` (read until the server closes
    or the declared length has arrived)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body
