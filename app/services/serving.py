"""Everything a serving process holds, built in one place and closed again: the runtime every
process has (``open_runtime``), plus what only the HTTP service needs: the token verifier, the
upload and generated-image rate limiters, the side pool behind generated defaults and the deep
self-test, the renditions and their pool, and the metrics. The app's lifespan opens it; routes
reach it as one typed object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, fields

from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.ratelimit import UploadRateLimiter
from app.core.security import TokenVerifier
from app.services.defaults import DefaultImages, SelfTest, side_pool
from app.services.renditions import Renditions, rendition_pool
from app.services.runtime import Runtime, open_runtime
from app.storage.base import Storage


@dataclass(frozen=True)
class ServiceRuntime(Runtime):
    metrics: Metrics
    verifier: TokenVerifier
    # None when the setting switches the limit off.
    upload_limiter: UploadRateLimiter | None
    default_images: DefaultImages
    selftest: SelfTest
    renditions: Renditions


@asynccontextmanager
async def open_service_runtime(
    settings: Settings, *, metrics: Metrics, storage: Storage | None = None
) -> AsyncIterator[ServiceRuntime]:
    """Build it all (``ConfigurationError`` when the storage cannot be used), yield it, and close
    what was built here; an injected ``storage`` belongs to the caller."""
    async with AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(
            open_runtime(settings, storage=storage, metrics=metrics)
        )
        upload_limiter = _limiter(stack, settings.rate_limit, settings)
        default_limiter = _limiter(
            stack,
            settings.default_rate_limit,
            settings,
            namespace="avatar-default",
            noun="generated images",
        )
        # Work anonymous clients can cause runs beside the upload pool, never in it.
        anonymous_pool = side_pool(settings)
        stack.callback(anonymous_pool.shutdown)
        renditions_pool = rendition_pool(settings, metrics)
        stack.callback(renditions_pool.shutdown)
        renditions = Renditions(
            sessions=runtime.sessions,
            storage=runtime.storage,
            pool=renditions_pool,
            options=runtime.options,
            ladder=settings.size_ladder,
            metrics=metrics,
        )
        stack.push_async_callback(renditions.drain)
        yield ServiceRuntime(
            **{field.name: getattr(runtime, field.name) for field in fields(runtime)},
            metrics=metrics,
            verifier=TokenVerifier(settings),
            upload_limiter=upload_limiter,
            default_images=DefaultImages(anonymous_pool, default_limiter),
            selftest=SelfTest(anonymous_pool, runtime.options, interval=settings.selftest_interval),
            renditions=renditions,
        )


def _limiter(
    stack: AsyncExitStack, limit: str, settings: Settings, **kwargs: str
) -> UploadRateLimiter | None:
    if not limit:
        return None
    limiter = UploadRateLimiter(limit, settings.redis_url, **kwargs)
    stack.push_async_callback(limiter.close)
    return limiter
