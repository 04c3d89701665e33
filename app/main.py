"""The application factory. Long-lived objects are built in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.middleware import RequestContextMiddleware
from app.api.problems import install_problem_handlers
from app.api.routes import avatars, constraints, health, images, media, metrics, web
from app.api.schemas import Problem
from app.core.config import ConfigurationError, Settings, get_settings
from app.core.ratelimit import UploadRateLimiter
from app.core.security import TokenVerifier
from app.core.metrics import InstrumentedPool, InstrumentedStorage, Metrics
from app.db.session import create_engine, create_sessionmaker
from app.imaging.pipeline import PipelineOptions
from app.imaging.pool import WorkerPool
from app.storage import Storage, StorageUnavailable, build_storage


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        max_pixels=settings.max_pixels,
        max_dimension=settings.max_dimension,
        thumbnail_size=settings.thumbnail_size,
        thumbnail_sizes=tuple(settings.thumbnail_sizes),
        original_max_side=settings.original_max_side,
        max_frames=settings.max_frames,
        formats=frozenset(settings.allowed_formats),
    )


async def check_storage(storage: Storage) -> None:
    """The startup check: a store that cannot be used (a missing bucket, refused credentials,
    an unreachable endpoint) stops the service with a one-line reason, not a traceback."""
    try:
        await storage.check()
    except StorageUnavailable as exc:
        raise ConfigurationError(f"the storage cannot be used: {exc}") from None


def close_storage(storage: Storage) -> None:
    """Release what an adapter holds (the S3 client's connections and threads), if anything."""
    close = getattr(storage, "close", None)
    if close is not None:
        close()


def create_app(settings: Settings | None = None, *, storage: Storage | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.hs256_enabled:
        settings.signing_secret()  # fail (or create the development secret) before serving
    app_metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        pool = InstrumentedPool(WorkerPool(settings.workers, settings.queue_size), app_metrics)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = create_sessionmaker(engine)
        # An injected storage belongs to the caller, who closes it; a built one is closed here.
        app.state.storage = InstrumentedStorage(storage or build_storage(settings), app_metrics)
        app.state.pool = pool
        app.state.pipeline_options = pipeline_options(settings)
        app.state.token_verifier = TokenVerifier(settings)
        app.state.rate_limiter = (
            UploadRateLimiter(settings.rate_limit, settings.redis_url)
            if settings.rate_limit
            else None
        )
        try:
            await check_storage(app.state.storage)
            yield
        finally:
            pool.shutdown()
            if app.state.rate_limiter is not None:
                await app.state.rate_limiter.close()
            await engine.dispose()
            if storage is None:
                close_storage(app.state.storage)

    app = FastAPI(
        title="Avatar service",
        version="0.1.0",
        summary="Uploads validated, sanitised, sized and stored in one call.",
        lifespan=lifespan,
    )
    app.state.metrics = app_metrics
    app.add_middleware(RequestContextMiddleware, metrics=app_metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match", "X-Request-ID"],
            expose_headers=["ETag", "Retry-After", "X-Request-ID", "Location"],
            max_age=600,
        )
    install_problem_handlers(app)
    app.include_router(avatars.router)
    app.include_router(images.router)
    app.include_router(constraints.router)
    app.include_router(media.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    if settings.env == "development":
        app.include_router(web.router)

    original_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = original_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
                Problem.model_json_schema()
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_served_app() -> FastAPI:
    """The factory each server process calls when `serve` runs several of them: settings from
    the environment, JSON logs configured in that process."""
    from app.core.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
