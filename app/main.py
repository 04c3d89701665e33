"""The application factory. Long-lived objects are built in the lifespan, never at import."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.middleware import (
    HeadAsGetMiddleware,
    RequestContextMiddleware,
    UnreadBodyMiddleware,
)
from app.api.problems import install_problem_handlers
from app.api.routes import avatars, batch, constraints, health, images, media, metrics, web
from app.api.schemas import Problem
from app.api.upload import ENVELOPE_BYTES, base64_limit
from app.core.config import Settings, get_settings
from app.core.metrics import Metrics
from app.services.outbox import dispatching
from app.services.serving import open_service_runtime
from app.storage import Storage


def create_app(
    settings: Settings | None = None, *, storage: Storage | None = None, serving: bool = False
) -> FastAPI:
    """``serving``: the app is a server process's (``serve``), which freezes what startup
    made once it has started (below)."""
    settings = settings or get_settings()
    if settings.hs256_enabled:
        settings.signing_secret()  # fail (or create the development secret) before serving
    app_metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # An injected storage belongs to the caller, who closes it; a built one is closed here,
        # and checked before anything is served.
        async with open_service_runtime(settings, metrics=app_metrics, storage=storage) as runtime:
            app.state.runtime = runtime  # what the routes get (app.api.deps.get_runtime)
            # Events leave the outbox from here (unless dedicated workers send them).
            async with dispatching(settings, runtime.sessions, app_metrics):
                if serving:
                    _freeze_startup_objects()
                yield

    app = FastAPI(
        title="Avatar service",
        version="0.1.0",
        summary="Uploads validated, sanitised, sized and stored in one call.",
        lifespan=lifespan,
    )
    app.add_middleware(HeadAsGetMiddleware)  # innermost: the log line still says HEAD
    app.add_middleware(
        UnreadBodyMiddleware,
        # The longest body a route takes: a base64 upload of the largest image.
        max_bytes=base64_limit(settings.max_upload_bytes) + ENVELOPE_BYTES,
        idle_timeout=settings.body_idle_timeout,
        total_timeout=settings.body_timeout,
    )
    app.add_middleware(RequestContextMiddleware, metrics=app_metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-None-Match",
                "X-Request-ID",
                "Idempotency-Key",
            ],
            expose_headers=[
                "ETag",
                "Retry-After",
                "X-Request-ID",
                "Location",
                "Idempotent-Replayed",
            ],
            max_age=600,
        )
    install_problem_handlers(app)
    app.include_router(avatars.router)
    app.include_router(images.router)
    app.include_router(batch.router)
    app.include_router(constraints.router)
    app.include_router(media.router)  # the OpenAPI entry; media.route, first, answers
    app.router.routes.insert(0, media.route)
    app.include_router(health.router)
    app.include_router(metrics.router)
    if settings.dev_tokens:  # only ever explicitly (see Settings._check_dev_tokens)
        app.include_router(web.router)

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
                Problem.model_json_schema()
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _freeze_startup_objects() -> None:
    """What startup made (modules, the app, the runtime: about 130,000 objects) lives as long
    as the process: the garbage collector stops scanning it. A full collection otherwise walks
    them all, and stops every request meanwhile (measured: 170-190 ms on the 2-core machine
    under load, once or more in a run of benchmarks/reads.py; after the freeze, under 1 ms)."""
    gc.collect()
    gc.freeze()


def create_served_app() -> FastAPI:
    """The factory each server process calls when `serve` runs several of them: settings from
    the environment, JSON logs configured in that process."""
    from app.core.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings, serving=True)
