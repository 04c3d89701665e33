"""Gravatar-style image URLs: ``/avatars/{user_id}?size=N&default=...`` answers with a picture
(or a redirect to one), so an ``<img src>`` needs nothing but the user id.

The format follows ``Accept`` (AVIF where listed, then WebP, then JPEG, or PNG for a picture
with transparency) unless ``?format=`` names one; the size is the smallest ladder side at least
``size``; an animation is the still for ``?animate=0`` or ``Sec-CH-Prefers-Reduced-Motion:
reduce``. Renditions the avatar does not have yet are derived first
(``app.services.renditions``). ``/avatars/{user_id}/{version}/{name}`` is one rendition of one
version, immutable: the document's ``<picture>`` sources point there until it is stored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from app.api.caching import IMMUTABLE, image_response
from app.api.deps import (
    DefaultImagesDep,
    PathUserId,
    ReadsDep,
    RenditionsDep,
    SettingsDep,
    StorageDep,
)
from app.api.problems import problem_responses
from app.core import errors
from app.core.variants import (
    AVIF,
    EXTENSIONS,
    FORMATS,
    JPEG,
    PNG,
    WEBP,
    StoredVariant,
    ladder_side,
    parse_rendition,
)
from app.db.models import Avatar
from app.services import avatars as service
from app.services.renditions import Renditions
from app.storage.base import Storage

router = APIRouter(tags=["avatars"])

DEFAULT_SIZE = 80  # as Gravatar
MAX_DEFAULT_SIZE = 1024
REDUCED_MOTION = "Sec-CH-Prefers-Reduced-Motion"
# The answer depends on these request headers: caches keep one copy per value.
NEGOTIATED = {"Vary": f"Accept, {REDUCED_MOTION}", "Accept-CH": REDUCED_MOTION}
_IMAGE_TYPES: dict[str, object] = {
    "content": {content_type: {} for content_type in FORMATS.values()}
}

# What both image routes answer besides their problems.
_IMAGE_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {**_IMAGE_TYPES, "description": "The image."},
    302: {"description": "Redirect to the stored object (storage that serves objects)."},
    304: {"description": "Not modified."},
}

FormatName = Literal["avif", "webp", "jpeg", "png"]


def preferred_type(accept: str, *, transparent: bool) -> str:
    """The format for an ``Accept`` header: AVIF where the client lists it, then WebP, else
    JPEG, or PNG for a picture with transparency. Only types listed by name count (``*/*``
    and ``image/*`` say nothing about what a client can show); ``q=0`` refuses one."""
    listed: dict[str, float] = {}
    for item in accept.lower().split(","):
        media_type, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        listed[media_type] = quality
    for content_type in (AVIF, WEBP):
        if listed.get(content_type, 0.0) > 0:
            return content_type
    return PNG if transparent else JPEG


def _prefers_reduced_motion(request: Request, animate: int) -> bool:
    hint = request.headers.get(REDUCED_MOTION, "").strip().strip('"').lower()
    return animate == 0 or hint == "reduce"


def _image(
    request: Request, data: bytes, *, cache_control: str, content_type: str, vary: bool = True
) -> Response:
    response = image_response(request, data, content_type=content_type, cache_control=cache_control)
    if vary:
        response.headers.update(NEGOTIATED)
    return response


async def _serve(
    request: Request,
    storage: Storage,
    variant: StoredVariant,
    *,
    cache_control: str,
    vary: bool,
) -> Response:
    """The stored object: a redirect to it where the store serves objects (S3, a CDN), else
    its bytes."""
    url = storage.object_url(variant.key)
    if url is not None:
        headers = {"Cache-Control": cache_control, **(NEGOTIATED if vary else {})}
        return RedirectResponse(url, status_code=302, headers=headers)
    try:
        data = await storage.get(variant.key)
    except FileNotFoundError:
        raise errors.StorageUnavailable("A stored file is missing.") from None
    return _image(
        request, data, cache_control=cache_control, content_type=variant.content_type, vary=vary
    )


@router.get(
    "/avatars/{user_id}",
    summary="The avatar image itself, Gravatar-style",
    description="The avatar's square at the smallest ladder side of at least `size` px (never "
    "upscaled), in the format `Accept` asks for (AVIF where listed, then WebP, else JPEG, or "
    "PNG for a picture with transparency) unless `format` names one; an animation is its "
    "still for `animate=0` or `Sec-CH-Prefers-Reduced-Motion: reduce`, and JPEG and PNG are "
    "always the still. A size or format not stored yet is derived first (503 + Retry-After "
    "when every image worker is busy). With storage that serves objects directly (S3, a CDN) "
    "the answer is a redirect to it. Users without an avatar get `default`: 404, or a "
    "generated image (initials, identicon, or `mp`, a silhouette), the same for the same user "
    "every time. Generated images are kept once made; making new ones is limited per client "
    "address (AVATAR_DEFAULT_RATE_LIMIT, then 429).",
    response_class=Response,
    responses={
        **_IMAGE_ANSWERS,
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
    renditions: RenditionsDep,
    size: Annotated[int, Query(ge=1, le=4096, description="Wanted side in px.")] = DEFAULT_SIZE,
    default: Annotated[
        Literal["404", "initials", "identicon", "mp"],
        Query(description="What users without an avatar get."),
    ] = "404",
    format: Annotated[
        FormatName | None, Query(description="This format, whatever `Accept` says.")
    ] = None,
    animate: Annotated[
        int, Query(ge=0, le=1, description="0: an animation's still (reduced motion).")
    ] = 1,
) -> Response:
    cache_control = f"public, max-age={settings.avatar_max_age}"
    accept = request.headers.get("accept", "")
    still = _prefers_reduced_motion(request, animate)
    try:
        avatar = await service.read_avatar(reads=reads, user_id=user_id)
    except errors.AvatarNotFound:
        if default == "404":
            raise
        side = ladder_side(renditions.ladder, size, largest=MAX_DEFAULT_SIZE)
        content_type = FORMATS[format] if format else preferred_type(accept, transparent=False)
        client = request.client.host if request.client else "unknown"
        data = await defaults.image(
            default, user_id, side, client=client, content_type=content_type
        )
        return _image(request, data, cache_control=cache_control, content_type=content_type)

    variant = await _rendition(renditions, avatar, accept, format, size, still=still)
    return await _serve(request, storage, variant, cache_control=cache_control, vary=True)


async def _rendition(
    renditions: Renditions,
    avatar: Avatar,
    accept: str,
    format: str | None,
    size: int,
    *,
    still: bool,
) -> StoredVariant:
    if format is not None:
        content_type = FORMATS[format]
    else:
        content_type = preferred_type(accept, transparent=False)
        if content_type == JPEG and await renditions.has_alpha(avatar):
            content_type = PNG
    side = renditions.side_for(avatar, size)
    return await renditions.get(avatar, content_type, side, still=still)


@router.get(
    "/avatars/{user_id}/{version}/{name}",
    summary="One rendition of one version of an avatar",
    description="A square of the avatar at `version`, named as the document's `sources` name "
    "it (`avif-128.avif`, `webp-still-96.webp`...), derived on first request. Immutable: a "
    "replaced version is 404.",
    response_class=Response,
    responses={
        **_IMAGE_ANSWERS,
        **problem_responses(errors.AvatarNotFound, errors.ResourceNotFound, errors.ServerBusy),
    },
)
async def read_rendition(
    user_id: PathUserId,
    version: str,
    name: str,
    request: Request,
    reads: ReadsDep,
    storage: StorageDep,
    renditions: RenditionsDep,
) -> Response:
    stem, _, extension = name.partition(".")
    parsed = parse_rendition(stem)
    if parsed is None or EXTENSIONS[parsed[0]] != extension:
        raise errors.ResourceNotFound("No such rendition.")
    content_type, side, still = parsed
    avatar = await service.read_avatar(reads=reads, user_id=user_id)
    if (
        avatar.version != version
        or side not in renditions.sides(avatar)
        or renditions.name_of(avatar, content_type, side, still=still) != stem
    ):
        raise errors.ResourceNotFound("No such rendition of this avatar.")
    variant = await renditions.get(avatar, content_type, side, still=still)
    return await _serve(request, storage, variant, cache_control=IMMUTABLE, vary=False)
