"""A TCP proxy on loopback that can be cut and restored: a database or S3 endpoint going away
(a restart, a failover, a partition) without stopping the server behind it.

``cut()`` refuses new connections and drops the open ones, both ways; ``restore()`` listens on
the same port again. As a process (``python -m cluster.tcpproxy PORT HOST TARGET_PORT``),
SIGUSR1 cuts and SIGUSR2 restores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to the target; ``cut()`` and ``restore()`` it at will."""

    def __init__(self, host: str, port: int, *, listen_port: int = 0) -> None:
        self.target = (host, port)
        self.port = listen_port
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones, both ways."""
        if self.server is None:
            return
        self.server.close()
        await self.server.wait_closed()
        self.server = None
        for writer in list(self.connections):
            writer.transport.abort()
        self.connections.clear()

    async def restore(self) -> None:
        if self.server is None:
            await self.start()  # the same port again

    async def close(self) -> None:
        if self.server is not None:
            await self.cut()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
        self.connections.discard(sink)


async def serve(listen_port: int, host: str, port: int) -> None:
    proxy = CuttableProxy(host, port, listen_port=listen_port)
    await proxy.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    pending: set[asyncio.Task] = set()

    def later(action) -> None:
        task = loop.create_task(action())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGUSR1, later, proxy.cut)
    loop.add_signal_handler(signal.SIGUSR2, later, proxy.restore)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listen_port", type=int)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    asyncio.run(serve(args.listen_port, args.host, args.port))


if __name__ == "__main__":
    main()
