"""A bounded pool of worker threads for image work.

Pillow releases the GIL while decoding, resizing and encoding, so threads use every core (two
threads give about twice one thread's throughput on two cores; a process pool adds little). The
pool admits at most ``workers + queue_size`` jobs; one more is refused at once with
``ServerBusy`` (503 + Retry-After) instead of piling request bodies up in memory.

A request takes its place with ``with pool.reserve():`` *before* it reads the upload body, so a
refused request has read nothing; ``run()`` inside that block uses the place taken. A place is
given back only when its job has really finished: a client that disconnects mid-job does not
free a place its thread still uses.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from app.core.errors import ServerBusy

P = ParamSpec("P")
T = TypeVar("T")


class _Place:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.job: Future[Any] | None = None


# The place the current request (asyncio task) holds, if any.
_held: ContextVar[_Place | None] = ContextVar("imaging_place", default=None)


class WorkerPool:
    def __init__(self, workers: int, queue_size: int, *, retry_after: int = 1) -> None:
        self.workers = workers
        self.capacity = workers + queue_size
        self.retry_after = retry_after
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imaging")
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def in_flight(self) -> int:
        return self._admitted

    @contextmanager
    def reserve(self) -> Iterator[None]:
        """Take a place or raise ``ServerBusy``. It is held until the block ends and the job
        started in it (by ``run``) has finished."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise ServerBusy(
                    "The server is processing too many images; retry shortly.",
                    retry_after=self.retry_after,
                )
            self._admitted += 1
        place = _Place(self)
        token = _held.set(place)
        try:
            yield
        finally:
            _held.reset(token)
            job = place.job
            if job is not None and not job.done():  # cancelled while its thread still works
                job.add_done_callback(lambda _job: self._release())
            else:
                self._release()

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func`` on a worker thread, in the place held by this request or a new one."""
        place = _held.get()
        if place is None or place.pool is not self or place.job is not None:
            with self.reserve():
                return await self.run(func, *args, **kwargs)
        place.job = self._executor.submit(functools.partial(func, *args, **kwargs))
        return await asyncio.wrap_future(place.job)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)
