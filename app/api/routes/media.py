"""Serving stored files. Only keys the service made are reachable; nothing outside the store.

``/media/{key}`` is the read every list and profile page makes most, and its work is small (a
key check, a file from memory, a hash), so the framework around it was most of its cost. It is
answered by ``route``, a plain Starlette route that ``app.main`` puts first among the app's
routes: one pattern match instead of FastAPI's walk through every included router before it,
and no dependency solving (measured with ``benchmarks/reads.py``). It sits inside the same
middleware (request id, metrics, the log line, HEAD as GET) and raises the same errors into
the same handlers. ``router`` declares the same read, answered by the same function, for the
OpenAPI document.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from app.api.caching import IMMUTABLE, image_response
from app.api.deps import StorageDep, runtime_of
from app.api.problems import problem_responses
from app.core.errors import ResourceNotFound
from app.storage.base import Storage, content_type_for, is_valid_key

PATH = "/media/{key:path}"

router = APIRouter(tags=["media"])


async def media_response(request: Request, key: str, storage: Storage) -> Response:
    """The stored file ``key`` with the image headers (or 304); 404 for any other key."""
    if not is_valid_key(key):
        raise ResourceNotFound("No such file.")
    try:
        data = await storage.get(key)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ResourceNotFound("No such file.") from None
    return image_response(
        request, data, content_type=content_type_for(key), cache_control=IMMUTABLE
    )


@router.get(
    PATH,
    summary="A stored image",
    operation_id="read_media",
    response_class=Response,
    responses={
        200: {"content": {"image/webp": {}}, "description": "The image bytes."},
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
        **problem_responses(ResourceNotFound),
    },
)
async def read_media(key: str, request: Request, storage: StorageDep) -> Response:
    return await media_response(request, key, storage)


class _MediaEndpoint:
    """``read_media`` as a bare ASGI app: what ``route`` serves."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        key: str = scope["path_params"]["key"]
        response = await media_response(request, key, runtime_of(request).storage)
        await response(scope, receive, send)


class _MediaRoute(Route):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            # What FastAPI's routes put in the scope: the log line and the metrics name the
            # route by its template.
            child_scope["route"] = self
        return match, child_scope


# The same path as ``read_media``, for GET (HEAD arrives as GET from HeadAsGetMiddleware; any
# other method is the same 405 problem), left out of the schema ``router`` writes.
route = _MediaRoute(PATH, _MediaEndpoint(), methods=["GET"], include_in_schema=False)
