"""Redis restarted under the rate limiter: the pooled connections it closed are replaced at
once, so the uploads right after the restart are counted, not let through (the fail-open path
is for Redis down, not for a stale connection). A private redis-server on its own port: the
machine's Redis is never stopped."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from app.core.errors import RateLimited
from app.core.ratelimit import UploadRateLimiter
from tests.conftest import missing
from tests.live import free_port


@contextmanager
def redis_server(port: int) -> Iterator[None]:
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    process = subprocess.Popen([*argv, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def until_listening(port: int) -> None:
    """Watched from outside the limiter, so that none of its pooled connections is touched."""
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@pytest.mark.server
async def test_the_first_uploads_after_a_redis_restart_are_counted(caplog) -> None:
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    port = free_port()
    limiter = UploadRateLimiter("2/minute", f"redis://127.0.0.1:{port}/0")
    try:
        with redis_server(port):
            until_listening(port)
            await limiter.hit("alice")
        with redis_server(port), caplog.at_level(logging.WARNING, "app.core.ratelimit"):
            until_listening(port)
            await limiter.hit("alice")  # on a pooled connection the old server closed
            await limiter.hit("alice")
            with pytest.raises(RateLimited):
                await limiter.hit("alice")
        assert "let through" not in caplog.text
    finally:
        await limiter.close()
