"""The one-process server's event loop accepts a burst of connections at once, on a busy loop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import cast

import pytest
import uvloop

from app.api.eventloop import BatchAcceptLoop, Listeners, new_event_loop

BURST = 24
BUSY_SECONDS = 0.003  # each round of the loop does this much work, as a loaded server's does


class Recorder(asyncio.Protocol):
    made: list[int]
    rounds: list[int]

    def __init__(
        self, rounds: list[int], made: list[int], all_made: asyncio.Event | None = None
    ) -> None:
        self.rounds, self.made, self.all_made = rounds, made, all_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(self.rounds[0])
        if self.all_made is not None and len(self.made) == BURST:
            self.all_made.set()
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # an echo: the connection works


def rounds_to_accept_a_burst(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> int:
    """How many rounds of a busy loop pass between the first and the last of ``BURST``
    connections made at once."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        rounds, made, all_made = [0], [], asyncio.Event()
        server = await loop.create_server(lambda: Recorder(rounds, made, all_made), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def busy() -> None:  # one callback a round, each doing some work
            rounds[0] += 1
            time.sleep(BUSY_SECONDS)
            if len(made) < BURST:
                loop.call_soon(busy)

        # The kernel completes the handshakes: every client is connected before any accept.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(BURST)]
        loop.call_soon(busy)
        try:
            async with asyncio.timeout(10):
                await all_made.wait()
        finally:
            for client in clients:
                client.close()
            server.close()
            await server.wait_closed()
        return made[-1] - made[0]

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def test_a_burst_of_connections_is_accepted_in_one_round_of_a_busy_loop() -> None:
    assert rounds_to_accept_a_burst(new_event_loop) <= 2


def test_uvloop_alone_accepts_one_connection_a_round() -> None:
    """The behaviour the batch accept replaces (and the measure above can tell them apart)."""
    assert rounds_to_accept_a_burst(uvloop.new_event_loop) >= BURST - 2


def test_accepted_connections_work_without_delay_and_close_stops_accepting() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        rounds: list[int] = [0]
        made: list[int] = []
        protocols: list[Recorder] = []

        def factory() -> Recorder:
            protocols.append(Recorder(rounds, made))
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        assert isinstance(server, Listeners)
        assert server.is_serving()
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        accepted = protocols[0].transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"pong")  # the open connection is the server's to finish
        assert await reader.readexactly(4) == b"pong"
        writer.close()
        protocols[0].transport.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


def test_a_given_listening_socket_and_other_servers(tmp_path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, BatchAcceptLoop)
        listening = socket.create_server(("127.0.0.1", 0))
        server = await loop.create_server(asyncio.Protocol, sock=listening)
        assert isinstance(server, Listeners) and server.sockets == (listening,)
        server.close()
        # A Unix socket stays uvloop's own server.
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(tmp_path / "s"))
        unix.listen()
        other = await loop.create_server(asyncio.Protocol, sock=unix)
        assert not isinstance(other, Listeners)
        other.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
