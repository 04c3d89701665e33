"""Dependencies as ``Annotated`` aliases. The long-lived objects are one ``ServiceRuntime``,
built once in the lifespan; nothing here reads a request body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.errors import AvatarNotFound, NotAuthenticated
from app.core.security import normalize_user_id
from app.db.reads import AvatarReads
from app.imaging.pipeline import PipelineOptions
from app.imaging.pool import WorkerPool
from app.services.defaults import DefaultImages, SelfTest
from app.services.renditions import Renditions
from app.services.serving import ServiceRuntime
from app.storage.base import Storage

_bearer = HTTPBearer(auto_error=False, description="A JWT whose `sub` is the user id.")

# Far above any real token (identity providers' tokens with many claims are a few KB): a longer
# Authorization header is refused before it is split, decoded or verified.
MAX_AUTHORIZATION_BYTES = 8192


def runtime_of(request: Request) -> ServiceRuntime:
    """The long-lived objects, built once in the lifespan (``app.services.serving``)."""
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


# Dependencies are ``async def``, even those that never wait: FastAPI runs a plain ``def`` one
# in its thread pool, a hop per dependency per request.
async def get_runtime(request: Request) -> ServiceRuntime:
    return runtime_of(request)


RuntimeDep = Annotated[ServiceRuntime, Depends(get_runtime)]
T = TypeVar("T")


def _part(read: Callable[[ServiceRuntime], T]) -> Callable[[ServiceRuntime], Awaitable[T]]:
    """A dependency giving one part of the runtime (each call a dependency of its own, so
    FastAPI's per-request cache tells them apart)."""

    async def part(runtime: RuntimeDep) -> T:
        return read(runtime)

    return part


SettingsDep = Annotated[Settings, Depends(_part(lambda runtime: runtime.settings))]
SessionsDep = Annotated[
    async_sessionmaker[AsyncSession], Depends(_part(lambda runtime: runtime.sessions))
]
ReadsDep = Annotated[AvatarReads, Depends(_part(lambda runtime: runtime.reads))]
StorageDep = Annotated[Storage, Depends(_part(lambda runtime: runtime.storage))]
PoolDep = Annotated[WorkerPool, Depends(_part(lambda runtime: runtime.pool))]
PipelineOptionsDep = Annotated[PipelineOptions, Depends(_part(lambda runtime: runtime.options))]
DefaultImagesDep = Annotated[DefaultImages, Depends(_part(lambda runtime: runtime.default_images))]
SelfTestDep = Annotated[SelfTest, Depends(_part(lambda runtime: runtime.selftest))]
RenditionsDep = Annotated[Renditions, Depends(_part(lambda runtime: runtime.renditions))]


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise NotAuthenticated("A bearer token is required.")
    if len(request.headers["authorization"]) > MAX_AUTHORIZATION_BYTES:
        raise NotAuthenticated(f"The Authorization header is over {MAX_AUTHORIZATION_BYTES} bytes.")
    verifier = runtime_of(request).verifier
    if verifier.needs_network:  # a JWKS fetch must not block the event loop
        user_id = await anyio.to_thread.run_sync(verifier.verify, credentials.credentials)
    else:
        user_id = verifier.verify(credentials.credentials)
    request.state.user_id = user_id  # for the request log line
    return user_id


CurrentUser = Annotated[str, Depends(get_current_user)]


async def get_path_user_id(user_id: str) -> str:
    """A ``{user_id}`` of the path in its canonical form; no avatar can belong to an id no token
    could carry (a NUL, a newline, ``/``, ``me``...), so those are 404 before any query."""
    try:
        return normalize_user_id(user_id)
    except ValueError:
        raise AvatarNotFound("No avatar: that is not a valid user id.") from None


PathUserId = Annotated[str, Depends(get_path_user_id)]


async def get_uploading_user(request: Request, user_id: CurrentUser) -> str:
    """The authenticated user, counted against the upload rate limit (before the body is read)."""
    limiter = runtime_of(request).upload_limiter
    if limiter is not None:
        await limiter.hit(user_id)
    return user_id


UploadingUser = Annotated[str, Depends(get_uploading_user)]


async def get_base_url(request: Request, settings: SettingsDep) -> str:
    """Prefix of returned URLs: the configured public base URL, else the request's own."""
    return settings.public_base_url or str(request.base_url).rstrip("/")


BaseUrl = Annotated[str, Depends(get_base_url)]
