"""The HTTP/1.1 protocol `avatar-service serve` runs: uvicorn's h11 implementation, with the
request head (request line and headers) bounded in size and in time.

- Size: h11 keeps at most ``AVATAR_MAX_HEADER_BYTES`` of an unfinished head, scanning each byte
  once, and refuses a longer one (431). httptools, uvicorn's other choice, has no such limit and
  copies a growing header again with every packet, on the event loop.
- Time: a head must be complete within ``AVATAR_HEADER_TIMEOUT`` seconds of the connection
  opening or of the previous response (408); uvicorn itself times out idle keep-alive
  connections only, and a client that sends a header line every few seconds is never cut off.
- Malformed requests the server can still answer get problem+json (400, 408, 431) like every
  other error, instead of uvicorn's ``text/plain``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.core.config import get_settings
from app.core.errors import AppError, HeadersTooLarge, InvalidHttpRequest, RequestTimeout

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def problem_bytes(error: AppError) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` as problem+json, closing the connection."""
    body = json.dumps(error.problem_fields()).encode()
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n"
        % (error.status, _REASONS.get(error.status, b"Error"), len(body))
    )
    return head + body


class BoundedH11Protocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The settings of this process (each server process reads the same environment).
        self.header_timeout = get_settings().header_timeout
        self.max_header_bytes = self.config.h11_max_incomplete_event_size
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state in (h11.IDLE, h11.DONE) and self._head_too_long(data):
            # h11 bounds a head that is still incomplete; one that arrives whole in a single
            # read (up to 64 KiB) would pass, so the bound is checked here as well.
            self._refuse_head(self._too_large())
            return
        super().data_received(data)
        self._watch_head()

    def _head_too_long(self, data: bytes) -> bool:
        buffered = self.conn.trailing_data[0]
        if len(buffered) + len(data) <= self.max_header_bytes:
            return False
        return b"\r\n\r\n" not in (buffered + data)[: self.max_header_bytes]

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"The request line and headers are longer than {self.max_header_bytes} bytes."
        )

    def _refuse_head(self, error: AppError) -> None:
        self._stop_head_timer()
        self._unset_keepalive_if_required()
        self.transport.write(problem_bytes(error))
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        """Arm the head deadline while the connection waits for a request head; disarm it once
        the head has arrived. The deadline is not restarted by more bytes of the same head."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)
        elif not waiting:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _closed = self.conn.trailing_data
        if partial:
            error = RequestTimeout(
                f"The request headers did not arrive within {self.header_timeout:g} s."
            )
            self._refuse_head(error)
        else:
            self._unset_keepalive_if_required()
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this when h11 cannot parse the request: answer in problem+json."""
        if len(self.conn.trailing_data[0]) > self.max_header_bytes:
            self._refuse_head(self._too_large())
        else:
            self._refuse_head(InvalidHttpRequest("The request is not valid HTTP/1.1."))
