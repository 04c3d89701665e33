"""The event loop a one-process `avatar-service serve` runs: uvloop, accepting new connections
in batches.

libuv (under uvloop) accepts one connection each time the loop polls, so that processes sharing
a listening socket share its connections. A busy server's loop polls once per round of ready
requests, and a round is as long as their work: a burst of new connections (a load balancer
reconnecting, clients arriving together) was accepted one per round, the last of 32 about half a
second after it connected while the connections already open were served every 25 ms
(measured at the TCP level under ``benchmarks/reads.py``'s load: every wrk request slower than
70 ms was a connection's first, waiting to be accepted). ``BatchAcceptLoop`` accepts every
pending connection, up to ``ACCEPTS_PER_POLL``, each time the listening socket is readable, as
asyncio's own loop does. With several server processes on one socket, `serve` keeps uvloop's
accept (``app.cli.server``): there, taking all would leave the others idle.

Only plain TCP listeners given as a socket or as host and port are taken over; anything else
(TLS, Unix sockets, ``reuse_port``) is uvloop's as before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

logger = logging.getLogger(__name__)

# Far above any burst one process serves at once; a bound so that one poll's accepting stays
# short whatever waits in the kernel's queue.
ACCEPTS_PER_POLL = 256
# Out of file descriptors (EMFILE, ENFILE), nothing can be accepted: listen again after this.
RETRY_AFTER_SECONDS = 0.5
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Listeners(asyncio.AbstractServer):
    """What ``create_server`` returns for the sockets ``BatchAcceptLoop`` accepts on."""

    def __init__(
        self,
        loop: BatchAcceptLoop,
        sockets: Iterable[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self._loop = loop
        self._sockets = list(sockets)
        self._factory = protocol_factory
        self._serving = False
        self._connecting: set[asyncio.Task[None]] = set()  # held until their transport is made

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving:
            return
        self._serving = True
        for sock in self._sockets:
            sock.setblocking(False)
            self._listen(sock)

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self._loop.create_future()  # until cancelled

    def close(self) -> None:
        """Stop accepting and close the listening sockets; open connections are left to the
        server (uvicorn finishes their requests)."""
        if not self._serving:
            return
        self._serving = False
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        return None

    def _listen(self, sock: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_POLL):
            try:
                connection, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left
            except ConnectionAbortedError:
                continue  # closed by the client while it waited in the queue
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                logger.warning("cannot accept connections now: %s", exc)
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(RETRY_AFTER_SECONDS, self._listen, sock)
                return
            connection.setblocking(False)
            # As uvloop's own accept does: a response's head and body go out without waiting.
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._connect(connection))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, connection: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, connection)
        except OSError:  # gone before its transport was made
            connection.close()


class BatchAcceptLoop(uvloop.Loop):
    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_port: bool | None = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        plain = ssl is None and not reuse_port and not kwargs
        if sock is not None and plain and sock.family in (socket.AF_INET, socket.AF_INET6):
            sockets = [sock]
        elif sock is None and plain and isinstance(host, str) and port is not None:
            sockets = _bind(host, port, backlog)
        else:
            create: Any = super().create_server  # its overloads do not take these as given
            return await create(  # type: ignore[no-any-return]
                protocol_factory,
                host,
                port,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                reuse_port=reuse_port,
                start_serving=start_serving,
                **kwargs,
            )
        server = Listeners(self, sockets, protocol_factory)
        if start_serving:
            await server.start_serving()
        return server


def _bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, as asyncio binds them."""
    addresses = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop factory `serve` names to uvicorn for one process."""
    return BatchAcceptLoop()
