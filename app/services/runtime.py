"""The long-lived objects a process works with, built from the settings and closed again.

The app's lifespan and the command-line tools (``reprocess``, ``import``, ``gc``) use the same
``open_runtime``: an engine and its session factory, the storage (checked before use), the
bounded worker pool and the pipeline options. What it builds, it closes; a storage passed in
belongs to the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import ConfigurationError, Settings
from app.core.metrics import Metrics
from app.db.reads import AvatarReads
from app.db.session import create_engine, create_sessionmaker
from app.imaging.pipeline import PipelineOptions, configure_pillow
from app.imaging.pool import JobRunner, WorkerPool
from app.services.avatars import AvatarWrites
from app.storage import Storage, StoreError, build_storage
from app.storage.instrumented import InstrumentedStorage


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        max_pixels=settings.max_pixels,
        max_dimension=settings.max_dimension,
        thumbnail_size=settings.thumbnail_size,
        thumbnail_sizes=tuple(settings.thumbnail_sizes),
        original_max_side=settings.original_max_side,
        max_frames=settings.max_frames,
        formats=frozenset(settings.allowed_formats),
        auto_crop=settings.auto_crop,
        jpeg_background=settings.jpeg_background_rgb,
    )


def worker_pool(
    settings: Settings,
    *,
    workers: int | None = None,
    queue_size: int | None = None,
    metrics: Metrics | None = None,
    warm: bool = True,
) -> WorkerPool:
    """An image worker pool (the settings' size unless given). Pillow's pixel limit, a
    process-wide global, is set from the settings here and in every worker process, and every
    job has the settings' deadline; with ``metrics``, each job's run time is observed."""
    configure_pillow(settings.max_pixels)
    return WorkerPool(
        settings.workers if workers is None else workers,
        settings.queue_size if queue_size is None else queue_size,
        job_timeout=settings.image_job_timeout,
        initializer=configure_pillow,
        initargs=(settings.max_pixels,),
        observe=metrics.processing_seconds.observe if metrics is not None else None,
        warm=warm,
    )


async def check_storage(storage: Storage) -> None:
    """The startup check: a store that cannot be used (a missing bucket, refused credentials,
    an unreachable endpoint) stops the service with a one-line reason, not a traceback."""
    try:
        await storage.check()
    except StoreError as exc:
        raise ConfigurationError(f"the storage cannot be used: {exc}") from None


def close_storage(storage: Storage) -> None:
    """Release what an adapter holds (the S3 client's connections and threads), if anything."""
    close = getattr(storage, "close", None)
    if close is not None:
        close()


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    reads: AvatarReads
    storage: Storage
    pool: WorkerPool
    options: PipelineOptions

    def writes(self, pool: JobRunner | None = None) -> AvatarWrites:
        """What ``replace_avatar`` and ``recrop_avatar`` work with: this runtime's parts, with
        image jobs run on ``pool`` (a place reserved in the pool) when given."""
        return AvatarWrites(self.sessions, self.storage, pool or self.pool, self.options)


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    storage: Storage | None = None,
    metrics: Metrics | None = None,
    images: bool = True,
) -> AsyncIterator[Runtime]:
    """Build the runtime, check the storage (``ConfigurationError`` when it cannot be used),
    yield it, and close what was built here. With ``metrics``, the storage and the pool
    record their calls and jobs. ``images=False`` (``gc``): no image is expected, so the pool's
    worker processes are not made ready ahead of a first job."""
    built = storage or build_storage(settings)
    engine = create_engine(settings.database_url, timeout=settings.database_timeout)
    reads = AvatarReads(engine, timeout=settings.database_timeout)
    pool = worker_pool(settings, metrics=metrics, warm=images)
    used_storage: Any = InstrumentedStorage(built, metrics) if metrics is not None else built
    try:
        await check_storage(used_storage)
        yield Runtime(
            settings=settings,
            engine=engine,
            sessions=create_sessionmaker(engine),
            reads=reads,
            storage=used_storage,
            pool=pool,
            options=pipeline_options(settings),
        )
    finally:
        pool.shutdown()
        await reads.close()
        await engine.dispose()
        if storage is None:
            close_storage(built)
