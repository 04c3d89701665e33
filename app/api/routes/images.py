"""Gravatar-style image URLs: ``/avatars/{user_id}?size=N&default=...`` answers with a picture
(or a redirect to one), so an ``<img src>`` needs nothing but the user id."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from app.api.caching import image_response
from app.api.deps import DefaultImagesDep, PathUserId, ReadsDep, SettingsDep, StorageDep
from app.api.problems import problem_responses
from app.core import errors
from app.services import avatars as service

router = APIRouter(tags=["avatars"])

DEFAULT_SIZE = 80  # as Gravatar
MAX_DEFAULT_SIZE = 1024


def _image(request: Request, data: bytes, *, max_age: int, content_type: str) -> Response:
    # The URL stays the same when the avatar changes: cache it briefly, then revalidate.
    return image_response(
        request, data, content_type=content_type, cache_control=f"public, max-age={max_age}"
    )


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
    reads: ReadsDep,
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
        avatar = await service.read_avatar(reads=reads, user_id=user_id)
    except errors.AvatarNotFound:
        if default == "404":
            raise
        side = min(size, MAX_DEFAULT_SIZE)
        client = request.client.host if request.client else "unknown"
        data = await defaults.image(default, user_id, side, client=client)
        return _image(request, data, max_age=max_age, content_type="image/webp")

    square = avatar.variants.square_for(size)
    url = storage.object_url(square.key)
    if url is not None:
        return RedirectResponse(
            url, status_code=302, headers={"Cache-Control": f"public, max-age={max_age}"}
        )
    try:
        data = await storage.get(square.key)
    except FileNotFoundError:
        raise errors.StorageUnavailable("A stored file is missing.") from None
    return _image(request, data, max_age=max_age, content_type=square.content_type)
