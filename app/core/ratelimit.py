"""Rate limits with the `limits` library: uploads per user, and generated default images per
client address.

In memory by default (each process counts on its own); through Redis when ``AVATAR_REDIS_URL``
is set, so every replica shares one count per user. If Redis stops answering, uploads are let
through (and a warning is logged): a rate limit must not take the service down with it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage as LimitsStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.core.errors import RateLimited

logger = logging.getLogger(__name__)

NAMESPACE = "avatar-upload"


def limits_storage_uri(redis_url: str) -> str:
    if not redis_url:
        return "async+memory://"
    scheme, sep, rest = redis_url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError("AVATAR_REDIS_URL must start with redis:// or rediss://")
    return f"async+{scheme}://{rest}"


class UploadRateLimiter:
    """Counts one kind of request per key; ``namespace`` keeps the kinds apart in a shared
    store and ``noun`` names them in the 429's detail."""

    def __init__(
        self,
        rate: str,
        redis_url: str = "",
        *,
        namespace: str = NAMESPACE,
        noun: str = "uploads",
    ) -> None:
        self.items: list[RateLimitItem] = parse_many(rate)
        self.namespace = namespace
        self.noun = noun
        uri = limits_storage_uri(redis_url)
        options: dict[str, Any] = {}
        self._redis_pool = None
        if redis_url:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError

            # Our own pool, so that the connections can be closed with the app. A pooled
            # connection that Redis closed (a restart) is replaced once at once, so the first
            # uploads after a restart are counted rather than let through.
            self._redis_pool = redis.asyncio.ConnectionPool.from_url(
                redis_url,
                socket_connect_timeout=1,
                socket_timeout=1,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
            options = {
                "implementation": "redispy",
                "key_prefix": "avatar",
                "connection_pool": self._redis_pool,
            }
        storage = storage_from_string(uri, **options)
        if not isinstance(storage, LimitsStorage):  # an async:// URI makes an async storage
            raise TypeError(f"{uri} is not an asynchronous storage")
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(self.storage)

    async def close(self) -> None:
        if self._redis_pool is not None:
            await self._redis_pool.aclose()

    async def hit(self, key: str) -> None:
        """Count one request for ``key`` (a user id, a client address); raise RateLimited when
        a limit is used up."""
        for item in self.items:
            try:
                allowed = await self.limiter.hit(item, self.namespace, key)
            except Exception as exc:
                logger.warning("rate limit storage failed (%s); request let through", exc)
                return
            if not allowed:
                stats = await self.limiter.get_window_stats(item, self.namespace, key)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"At most {item.amount} {self.noun} per {item.get_expiry()} seconds; "
                    f"retry in {retry_after} s.",
                    retry_after=retry_after,
                )

    async def check(self) -> bool:
        return await self.storage.check()
