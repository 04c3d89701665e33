"""A bounded pool of worker threads for image work.

Pillow releases the GIL while decoding, resizing and encoding, so threads use every core. The
pool admits at most ``workers + queue_size`` jobs; one more is refused at once with
``ServerBusy`` (503 + Retry-After) instead of piling request bodies up in memory.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from app.core.errors import ServerBusy

P = ParamSpec("P")
T = TypeVar("T")


class WorkerPool:
    def __init__(self, workers: int, queue_size: int) -> None:
        self.workers = workers
        self.capacity = workers + queue_size
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imaging")
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def in_flight(self) -> int:
        return self._admitted

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        with self._lock:
            if self._admitted >= self.capacity:
                raise ServerBusy("The server is processing too many images; retry shortly.")
            self._admitted += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, lambda: func(*args, **kwargs))
        finally:
            with self._lock:
                self._admitted -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)
