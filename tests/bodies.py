"""Request bodies that record how much of them the server pulled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

CHUNK = 65536


class CountingBody:
    """``chunks`` chunks of ``fill`` bytes after an optional ``head``; ``consumed`` counts the
    chunk bytes the server read (the head is not counted)."""

    def __init__(self, chunks: int, *, head: bytes = b"", fill: bytes = b"\0") -> None:
        self.chunks = chunks
        self.head = head
        self.fill = fill
        self.consumed = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        if self.head:
            yield self.head
        for _ in range(self.chunks):
            self.consumed += CHUNK
            yield self.fill * CHUNK


class TrickledBody:
    """``head``, then ``filler`` every ``interval`` seconds, ``count`` times: never idle for
    long, always too slow. ``sent`` counts the fillers the server pulled."""

    def __init__(self, head: bytes, filler: bytes, *, count: int = 100, interval: float = 0.05):
        self.head = head
        self.filler = filler
        self.count = count
        self.interval = interval
        self.sent = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        yield self.head
        for _ in range(self.count):
            await asyncio.sleep(self.interval)
            self.sent += 1
            yield self.filler
