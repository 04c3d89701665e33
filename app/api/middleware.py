"""Per-request context: request id, one JSON log line, and the HTTP metrics.

A pure ASGI middleware (no BaseHTTPMiddleware): it never buffers bodies, it only counts them.
The log line carries ids, the route template, status and duration; never tokens, image bytes or
anything read from an image.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.metrics import Metrics

access_log = logging.getLogger("app.access")

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UPLOAD_PATH = "/users/me/avatar"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        method = scope["method"]
        is_upload = method == "POST" and scope["path"] == UPLOAD_PATH
        counts = {"in": 0, "out": 0, "status": 500}
        start = time.perf_counter()

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        if is_upload:
            self.metrics.uploads_in_flight.inc()
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            duration = time.perf_counter() - start
            if is_upload:
                self.metrics.uploads_in_flight.dec()
            route = _route_template(scope)
            status = counts["status"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_seconds.labels(route, method).observe(duration)
            self.metrics.bytes_in.labels(route).inc(counts["in"])
            self.metrics.bytes_out.labels(route).inc(counts["out"])
            if is_upload:
                outcome = "created" if status == 201 else state.get("error_code", f"http_{status}")
                self.metrics.uploads.labels(outcome).inc()
            _log_request(state, method, route, status, duration)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            return candidate if _VALID_REQUEST_ID.fullmatch(candidate) else None
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _log_request(
    state: dict[str, Any], method: str, route: str, status: int, duration: float
) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": state.get("request_id"),
        "user_id": state.get("user_id"),
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(duration * 1000, 2),
        "error_code": state.get("error_code"),
    }
    access_log.info("request", extra={"fields": fields})


class HeadAsGetMiddleware:
    """``HEAD`` answered as ``GET`` without the body, on every route that has a ``GET``: the
    same status and headers (``Content-Length``, ``ETag`` and the caching headers included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, without_body)
        finally:
            # What routing found (the route, for the log line and the metrics) goes back out.
            for name, value in inner.items():
                scope.setdefault(name, value)


class UnreadBodyMiddleware:
    """An answer given before the request body was read whole (a 401, 413, 429 or 503 refused
    before the body): the rest of the body is received and thrown away first, within
    ``max_bytes`` and the body timeouts, so that a client that sends its whole body before it
    reads can read the answer (a "lingering close"). A body declared longer than that, sent
    without a length (chunked), or too slow, is not read: the answer closes the connection at
    once, where the server would otherwise receive a body of any size to keep the connection."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, idle_timeout: float, total_timeout: float
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _declared_body(scope)
        if scope["type"] != "http" or declared == 0:
            await self.app(scope, receive, send)
            return
        state = {"all": False}

        async def tracking_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["all"] = True
            return message

        async def answering_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not state["all"]:
                headers = list(message.get("headers", []))
                closing = any(k == b"connection" and v == b"close" for k, v in headers)
                lingering = (
                    declared is not None
                    and declared <= self.max_bytes
                    and message["status"] != 413  # refused for its size: not worth reading
                )
                if closing or not lingering or not await self._drain(tracking_receive, state):
                    headers = [(k, v) for k, v in headers if k != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, tracking_receive, answering_send)

    async def _drain(self, receive: Receive, state: dict[str, bool]) -> bool:
        """Throw the rest of the body away; False when it is too slow for that (its length is
        bounded by Content-Length, which the server enforces)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout
        while not state["all"]:
            remaining = min(self.idle_timeout, deadline - loop.time())
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await receive()
            except TimeoutError:
                return False
        return True


def _declared_body(scope: Scope) -> int | None:
    """The Content-Length, None for a chunked body (unknown length), 0 for no body."""
    length = 0
    for name, value in scope.get("headers", []):
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
    return length
