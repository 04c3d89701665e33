"""Generated default avatars (``/avatars/{id}?default=...``) and the deep self-test, kept away
from the upload pool.

Both are reachable without a token, so neither may take a place uploads need:

- they run on a small pool of their own (``SIDE_WORKERS`` worker process, ``SIDE_QUEUE``
  waiting; past that 503), never on the upload pool, with the same pixel limit and job deadline;
- a generated image is rendered once and kept (an LRU of ``CACHE_ENTRIES`` images; ``mp`` is
  the same picture for every user, so it is kept per size only); only renders, not cache hits,
  count against the per-client rate limit;
- the self-test runs at most once per interval, one run at a time; every caller in between gets
  the last report.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from app.core.config import Settings
from app.core.ratelimit import UploadRateLimiter
from app.core.variants import WEBP
from app.imaging.generated import default_avatar
from app.imaging.pipeline import PipelineOptions
from app.imaging.pool import WorkerPool
from app.services.runtime import worker_pool
from app.services.selftest import run_selftest

SIDE_WORKERS = 1
SIDE_QUEUE = 4
CACHE_ENTRIES = 2048


def side_pool(settings: Settings) -> WorkerPool:
    """The pool for work anonymous requests can cause (defaults, the self-test)."""
    return worker_pool(settings, workers=SIDE_WORKERS, queue_size=SIDE_QUEUE)


class DefaultImages:
    def __init__(
        self, pool: WorkerPool, limiter: UploadRateLimiter | None, *, entries: int = CACHE_ENTRIES
    ) -> None:
        self.pool = pool
        self.limiter = limiter
        self.entries = entries
        self._cache: OrderedDict[tuple[str, str, int, str], bytes] = OrderedDict()

    async def image(
        self, style: str, user_id: str, size: int, *, client: str, content_type: str = WEBP
    ) -> bytes:
        """The ``style`` default of ``user_id`` at ``size`` px in ``content_type``: from the
        cache, else rendered on the side pool once ``client`` is within its rate limit."""
        key = (style, "" if style == "mp" else user_id, size, content_type)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if self.limiter is not None:
            await self.limiter.hit(client)
        data = await self.pool.run(default_avatar, style, user_id, size, content_type)
        self._cache[key] = data
        while len(self._cache) > self.entries:
            self._cache.popitem(last=False)
        return data


class SelfTest:
    def __init__(self, pool: WorkerPool, options: PipelineOptions, *, interval: float) -> None:
        self.pool = pool
        self.options = options
        self.interval = interval
        self._lock = asyncio.Lock()
        self._report: dict[str, dict[str, Any]] | None = None
        self._ran_at = 0.0

    async def report(self) -> dict[str, dict[str, Any]]:
        """The last report if it is younger than the interval, else a new one (one at a time:
        callers that arrive meanwhile wait for it and share it)."""
        async with self._lock:
            report = self._report
            if report is not None and time.monotonic() - self._ran_at < self.interval:
                return report
            fresh = await self.pool.run(run_selftest, self.options)
            self._report, self._ran_at = fresh, time.monotonic()
            return fresh
