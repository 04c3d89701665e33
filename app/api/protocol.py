"""The HTTP/1.1 protocol `avatar-service serve` runs: uvicorn's httptools implementation (its
fast C parser), with the request head (request line and headers) bounded in size and in time.

- Size: the head's bytes are counted, and its end looked for, before the parser sees them; a
  head over ``AVATAR_MAX_HEADER_BYTES`` is refused (431) and never parsed. Plain httptools has
  no limit and copies a growing header again with every packet, on the event loop; uvicorn's h11
  protocol bounds the size but parses in Python (half the requests per second on a small route,
  ``benchmarks/http_protocol.py``).
- Time: a head must be complete within ``AVATAR_HEADER_TIMEOUT`` seconds of the connection
  opening or of the previous exchange (408); uvicorn itself times out idle keep-alive
  connections only, and a client that sends a header line every few seconds is never cut off.
- Malformed requests the server can still answer get problem+json (400, 408, 431) like every
  other error, instead of uvicorn's ``text/plain``; an HTTP/1.1 request without ``Host`` is a
  400 (RFC 9112 section 3.2), which llhttp would let through.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded in size and time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout = settings.header_timeout
        self.max_header_bytes = settings.max_header_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # the bytes that arrive now belong to a request head
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: an end marker split across reads
        self._message_done = True
        self._response_done = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._head_over_limit(data):
            self._refuse_head(_headers_too_large(self.max_header_bytes))
            return
        super().data_received(data)

    def _head_over_limit(self, data: bytes) -> bool:
        window = self._tail + data
        end = window.find(b"\r\n\r\n")
        if end == -1:
            self._head_bytes += len(data)
            self._tail = window[-3:]
            return self._head_bytes > self.max_header_bytes
        length = self._head_bytes - len(self._tail) + end + 4
        self._in_head = False  # the rest of this read is the body (or a pipelined request)
        return length > self.max_header_bytes

    def on_message_begin(self) -> None:
        self._message_done = False
        self._response_done = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        if self.parser.get_http_version() == "1.1" and not any(
            name == b"host" for name, _value in self.headers
        ):  # RFC 9112 3.2: a 400, as h11 answers (llhttp lets it through)
            raise httptools.HttpParserError("no Host header")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._message_done = True
        if self._response_done:
            self._begin_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._response_done = True
        if self._message_done:
            self._begin_head()

    def _begin_head(self) -> None:
        """The next bytes are a new request head: count them and arm its deadline."""
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes:
            self._refuse_head(
                RequestTimeout(
                    f"The request headers did not arrive within {self.header_timeout:g} s."
                )
            )
        else:
            self._unset_keepalive_if_required()
            self.transport.close()

    def _refuse_head(self, error: AppError) -> None:
        self._stop_head_timer()
        self._unset_keepalive_if_required()
        self.transport.write(problem_bytes(error))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this when httptools cannot parse the request."""
        self._refuse_head(InvalidHttpRequest("The request is not valid HTTP/1.1."))


def _headers_too_large(limit: int) -> HeadersTooLarge:
    return HeadersTooLarge(f"The request line and headers are longer than {limit} bytes.")
