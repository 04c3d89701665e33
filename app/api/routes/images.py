"""Gravatar-style image URLs: ``/avatars/{user_id}?size=N&default=...`` answers with a picture
(or a redirect to one), so an ``<img src>`` needs nothing but the user id."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from app.api.caching import client_has, etag_of
from app.api.deps import DefaultImagesDep, PathUserId, SessionsDep, SettingsDep, StorageDep
from app.api.problems import problem_responses
from app.api.routes.media import MEDIA_CSP
from app.core import errors
from app.db.models import Avatar
from app.services import avatars as service

router = APIRouter(tags=["avatars"])

DEFAULT_SIZE = 80  # as Gravatar
MAX_DEFAULT_SIZE = 1024


def pick_square(avatar: Avatar, size: int) -> dict:
    """The smallest stored square at least ``size`` px, else the largest one."""
    squares = sorted(
        (v for v in avatar.variants if v["name"].startswith("thumb")), key=lambda v: v["width"]
    )
    return next((v for v in squares if v["width"] >= size), squares[-1])


def _image(request: Request, data: bytes, *, max_age: int, content_type: str) -> Response:
    etag = etag_of(data)
    headers = {
        "ETag": etag,
        # The URL stays the same when the avatar changes: cache it briefly, then revalidate.
        "Cache-Control": f"public, max-age={max_age}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": MEDIA_CSP,
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if client_has(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=content_type, headers=headers)


@router.get(
    "/avatars/{user_id}",
    summary="The avatar image itself, Gravatar-style",
    description="The smallest stored square of at least `size` px (else the largest). With "
    "storage that serves objects directly (S3, a CDN) the answer is a redirect to it. Users "
    "without an avatar get `default`: 404, or a generated image (initials, identicon, or "
    "`mp`, a silhouette), the same for the same user every time. Generated images are kept once "
    "made; making new ones is limited per client address (AVATAR_DEFAULT_RATE_LIMIT, then 429).",
    response_class=Response,
    responses={
        200: {"content": {"image/webp": {}}, "description": "The image."},
        302: {"description": "Redirect to the stored object (storage that serves objects)."},
        304: {"description": "Not modified."},
        **problem_responses(errors.AvatarNotFound, errors.RateLimited, errors.ServerBusy),
    },
)
async def read_avatar_image(
    request: Request,
    user_id: PathUserId,
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    defaults: DefaultImagesDep,
    size: Annotated[int, Query(ge=1, le=4096, description="Wanted side in px.")] = DEFAULT_SIZE,
    default: Annotated[
        Literal["404", "initials", "identicon", "mp"],
        Query(description="What users without an avatar get."),
    ] = "404",
) -> Response:
    max_age = settings.avatar_max_age
    try:
        avatar = await service.get_avatar(sessions=sessions, user_id=user_id)
    except errors.AvatarNotFound:
        if default == "404":
            raise
        side = min(size, MAX_DEFAULT_SIZE)
        client = request.client.host if request.client else "unknown"
        data = await defaults.image(default, user_id, side, client=client)
        return _image(request, data, max_age=max_age, content_type="image/webp")

    square = pick_square(avatar, size)
    if storage.serves_objects:
        url = storage.url(square["key"], base_url=str(request.base_url).rstrip("/"))
        return RedirectResponse(
            url, status_code=302, headers={"Cache-Control": f"public, max-age={max_age}"}
        )
    try:
        data = await storage.get(square["key"])
    except FileNotFoundError:
        raise errors.StorageUnavailableError("A stored file is missing.") from None
    return _image(request, data, max_age=max_age, content_type=square["content_type"])
