"""A Storage that records each call in the metrics, around any adapter."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from app.core.metrics import Metrics
from app.storage.base import Storage, StoredObject

T = TypeVar("T")


class InstrumentedStorage:
    """A Storage that records each call's latency and failures, then delegates."""

    def __init__(self, inner: Storage, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def _observe(self, operation: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            return await call
        except FileNotFoundError:
            raise  # a missing key is an answer, not a storage failure
        except Exception:
            self.metrics.storage_errors.labels(operation).inc()
            raise
        finally:
            self.metrics.storage_seconds.labels(operation).observe(time.perf_counter() - start)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self._observe("put", self.inner.put(key, data, content_type))

    async def get(self, key: str) -> bytes:
        return await self._observe("get", self.inner.get(key))

    async def delete(self, key: str) -> None:
        await self._observe("delete", self.inner.delete(key))

    async def exists(self, key: str) -> bool:
        return await self._observe("exists", self.inner.exists(key))

    def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        return self.inner.list_objects(prefix)

    def list_partial(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        return self.inner.list_partial(prefix)

    async def delete_partial(self, name: str) -> None:
        await self._observe("delete", self.inner.delete_partial(name))

    def object_url(self, key: str) -> str | None:
        return self.inner.object_url(key)

    async def check(self) -> None:
        await self._observe("check", self.inner.check())

    def __getattr__(self, name: str) -> Any:  # adapter extras (e.g. the S3 client) stay reachable
        return getattr(self.inner, name)
