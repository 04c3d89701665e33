"""A real server for the benchmarks: ``avatar-service serve`` in a child process, on a free
loopback port, with its own data folder (SQLite, local storage) that is removed afterwards.

Also the client side: one multipart body built once, uploads over plain ``http.client`` (little
CPU of its own, so it takes little from the server on a small machine), and the server's memory
read from ``/proc``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SECRET = "benchmark-secret-" + "b" * 40
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    url: str
    pid: int | None  # None for a server this process did not start
    secret: str

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    def token(self, user_id: str) -> str:
        from app.core.config import load_settings
        from app.core.security import create_token

        settings = load_settings(_env_file=None, jwt_secret=self.secret, data_dir=Path("."))
        return create_token(settings, user_id, ttl_seconds=3600)


def add_postgres_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-url",
        default="",
        help="a PostgreSQL server to use; a database is made on it for the run and dropped after",
    )


@contextmanager
def scratch_postgres(postgres_url: str, prefix: str) -> Iterator[str | None]:
    """A database of its own on the PostgreSQL server behind ``postgres_url``, for one run:
    its URL, dropped afterwards. None without a server (the server's default, SQLite)."""
    if not postgres_url:
        yield None
        return
    import asyncio

    from sqlalchemy.engine import make_url

    from cluster.local import create_database, drop_database

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_database(postgres_url, name))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(drop_database(postgres_url, name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from app.cli import main; main()", *args]


@contextmanager
def spawned_server(
    command: Callable[[int], list[str]] | None = None, **settings: str
) -> Iterator[Server]:
    """Start a server with ``AVATAR_*`` overrides (e.g. ``workers="2"``); stop it on exit.
    ``command`` makes the server's command line for a port (default: `avatar-service serve`)."""
    data_dir = Path(tempfile.mkdtemp(prefix="avatar-bench-"))
    # Only this benchmark's settings: none inherited from the environment.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    env = {
        **inherited,
        "AVATAR_DATA_DIR": str(data_dir),
        "AVATAR_JWT_SECRET": SECRET,
        "AVATAR_RATE_LIMIT": "1000000/second",
        "AVATAR_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    env.update({f"AVATAR_{name.upper()}": value for name, value in settings.items()})
    port = _free_port()
    subprocess.run(_cli("migrate"), env=env, cwd=ROOT, check=True, capture_output=True)
    argv = command(port) if command else _cli("serve", "--host", "127.0.0.1", "--port", str(port))
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(f"http://127.0.0.1:{port}", process.pid, SECRET)
    try:
        _wait_ready(server, process)
        yield server
    finally:
        stop(process)
        shutil.rmtree(data_dir, ignore_errors=True)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_ready(server: Server, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            status, _body, _ms = get(server, "/healthz", timeout=1)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not answer /healthz in time")


def multipart(data: bytes, filename: str = "photo.jpg") -> tuple[bytes, str]:
    """The upload body, built once, and its content type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        "\r\nContent-Type: image/jpeg\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


class Client:
    """One keep-alive connection, as one browser tab would have."""

    def __init__(self, server: Server, user_id: str) -> None:
        self.server = server
        self.connection = http.client.HTTPConnection(*server.host_port, timeout=120)
        self.headers = {"Authorization": f"Bearer {server.token(user_id)}"}

    def upload(self, body: bytes, content_type: str) -> tuple[int, dict, float]:
        """(status, JSON document, milliseconds)."""
        start = time.perf_counter()
        self.connection.request(
            "POST",
            "/users/me/avatar",
            body=body,
            headers={**self.headers, "Content-Type": content_type},
        )
        response = self.connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        return response.status, json.loads(payload or b"{}"), elapsed

    def close(self) -> None:
        self.connection.close()


def upload_avatars(server: Server, user_ids: list[str], photo: bytes, *, clients: int = 1) -> None:
    """An avatar for each of ``user_ids``, uploaded through the API ``clients`` at a time;
    ``RuntimeError`` when any upload is refused."""
    body, content_type = multipart(photo)
    failures: list[str] = []

    def upload(share: list[str]) -> None:
        for user_id in share:
            client = Client(server, user_id)
            try:
                status, document, _ms = client.upload(body, content_type)
            finally:
                client.close()
            if status != 201:
                failures.append(f"{user_id}: {status} {document}")

    threads = [
        threading.Thread(target=upload, args=(user_ids[n::clients],)) for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} uploads failed, e.g. {failures[0]}")


def get(server: Server, path: str, *, timeout: float = 10) -> tuple[int, bytes, float]:
    connection = http.client.HTTPConnection(*server.host_port, timeout=timeout)
    try:
        start = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, body, (time.perf_counter() - start) * 1000
    finally:
        connection.close()


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """``VmHWM`` (peak resident memory so far) or ``VmRSS`` (now) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"{field} not found for process {pid}")


class Sampler(threading.Thread):
    """The server's RSS and /healthz latency, sampled until stopped."""

    def __init__(self, server: Server, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.stop = threading.Event()
        self.rss_mb: list[float] = []
        self.health_ms: list[float] = []
        self.health_failures = 0

    def run(self) -> None:
        while not self.stop.is_set():
            if self.server.pid is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.rss_mb.append(memory_mb(self.server.pid, "VmRSS"))
            try:
                status, _body, ms = get(self.server, "/healthz", timeout=10)
                self.health_ms.append(ms)
                self.health_failures += status != 200
            except OSError:
                self.health_failures += 1
            self.stop.wait(self.interval)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(1, min(len(ordered), math.ceil(q / 100 * len(ordered)))) - 1]
