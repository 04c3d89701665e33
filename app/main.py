"""The application factory. Long-lived objects are built in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.problems import install_problem_handlers
from app.api.routes import avatars, health, media
from app.api.schemas import Problem
from app.core.config import Settings, get_settings
from app.db.session import create_engine, create_sessionmaker
from app.imaging.pipeline import PipelineOptions
from app.imaging.pool import WorkerPool
from app.storage import Storage, build_storage


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        max_pixels=settings.max_pixels,
        max_dimension=settings.max_dimension,
        thumbnail_size=settings.thumbnail_size,
    )


def create_app(settings: Settings | None = None, *, storage: Storage | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.signing_secret()  # fail (or create the development secret) before serving

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        pool = WorkerPool(settings.workers, settings.queue_size)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = create_sessionmaker(engine)
        app.state.storage = storage or build_storage(settings)
        app.state.pool = pool
        app.state.pipeline_options = pipeline_options(settings)
        await app.state.storage.check()
        try:
            yield
        finally:
            pool.shutdown()
            await engine.dispose()

    app = FastAPI(
        title="Avatar service",
        version="0.1.0",
        summary="Uploads validated, sanitised, sized and stored in one call.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.include_router(avatars.router)
    app.include_router(media.router)
    app.include_router(health.router)

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
