"""A real webhook receiver on loopback, for the event tests and the benchmark.

It listens on a free 127.0.0.1 port in a thread, verifies every webhook it gets with the
``standardwebhooks`` library (once per secret it was given: each must verify on its own), and
records what came in. ``mode`` sets how it answers: ``ok`` (204), ``slow`` (204 after 50 ms),
``late`` (204 after 1 s), ``fail`` (500), ``redirect`` (307 to another path), ``hang`` (reads
the request, never answers until stopped); ``stop()`` and ``start()`` take it down and bring it
back on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HOOK_PATH = "/hooks/avatar"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    started: float
    answered: float | None = None
    status: int | None = None
    # The secrets this request verified with (standardwebhooks), and why any failed.
    verified: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self, secrets: list[str] | None = None, *, port: int = 0) -> None:
        self.secrets = secrets or []
        self.mode = "ok"
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                item = Received(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    started=time.monotonic(),
                )
                if self.path == HOOK_PATH:
                    receiver.verify(item)
                with receiver.lock:
                    receiver.requests.append(item)
                    mode = receiver.mode
                if mode == "hang":
                    receiver.release.wait(120)
                    self.close_connection = True
                    return
                if mode == "slow":  # long enough for requests to overlap
                    time.sleep(0.05)
                elif mode == "late":  # the work is done, the answer comes after the timeout
                    time.sleep(1.0)
                status = {"ok": 204, "slow": 204, "late": 204, "fail": 500, "redirect": 307}[mode]
                self.send_response(status)
                if status == 307:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
                item.status = status
                item.answered = time.monotonic()

            do_POST = do_PURGE = do_GET = do_DELETE = handle_any

        self.release.clear()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Take the receiver down: its port refuses connections until ``start``."""
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def verify(self, item: Received) -> None:
        for secret in self.secrets:
            try:
                Webhook(secret).verify(item.body, item.headers)
            except WebhookVerificationError as exc:
                item.failures.append(f"{secret[:12]}…: {exc}")
            else:
                item.verified.append(secret)

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def delivered(self) -> list[Received]:
        """Webhooks answered 2xx, in the order they arrived."""
        return [r for r in self.snapshot() if r.path == HOOK_PATH and r.status == 204]

    def delivered_ids(self) -> list[str]:
        return [r.event_id for r in self.delivered()]


@contextmanager
def receiving(secrets: list[str] | None = None) -> Iterator[Receiver]:
    receiver = Receiver(secrets)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def webhook_settings(receiver: Receiver, *, name: str = "test", **extra: Any) -> dict[str, Any]:
    """Settings values that send every event to ``receiver``, with short delays for tests."""
    return {
        "public_base_url": "https://avatars.example.com",
        "webhooks": [{"name": name, "url": receiver.url, "secret": receiver.secrets}],
        "events_poll_interval": 0.1,
        "events_timeout": 2.0,
        "events_retry_first_delay": 0.2,
        "events_retry_max_delay": 1.0,
        **extra,
    }


async def wait_until(check: Callable[[], bool], within: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


async def outbox(database_url: str) -> list[dict[str, Any]]:
    """Every event of the outbox in order, each with its deliveries by target."""
    from sqlalchemy import text

    from app.db.session import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            events = (
                await connection.execute(
                    text(
                        "SELECT seq, id, type, user_id, version, previous_version, routed_at "
                        "FROM outbox_events ORDER BY seq"
                    )
                )
            ).mappings()
            rows = [dict(row) for row in events]
            deliveries = (
                await connection.execute(
                    text(
                        "SELECT event_seq, target, status, attempts, last_error "
                        "FROM outbox_deliveries"
                    )
                )
            ).mappings()
            by_event: dict[int, dict[str, dict[str, Any]]] = {}
            for delivery in deliveries:
                by_event.setdefault(delivery["event_seq"], {})[delivery["target"]] = dict(delivery)
    finally:
        await engine.dispose()
    for row in rows:
        row["deliveries"] = by_event.get(row["seq"], {})
    return rows


async def clear_outbox(database_url: str) -> None:
    """Empty the outbox (the PostgreSQL database is shared by the tests of a run)."""
    from sqlalchemy import text

    from app.db.session import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM outbox_deliveries"))
            await connection.execute(text("DELETE FROM outbox_events"))
    finally:
        await engine.dispose()
