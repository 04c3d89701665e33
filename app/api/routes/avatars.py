"""Avatar routes: HTTP in and out only; the work happens in ``app.services.avatars``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from app.api.deps import (
    CurrentUser,
    PathUserId,
    ReadsDep,
    RuntimeDep,
    SessionsDep,
    StorageDep,
    UploadingUser,
)
from app.api.idempotency import IdempotencyDep, upload_parts
from app.api.presenter import DocumentDep, check_inline_name
from app.api.problems import problem_responses
from app.api.schemas import AvatarPublic
from app.api.upload import (
    BASE64_FIELD,
    FILE_FIELD,
    JSON_BODY_ERRORS,
    abandoned_on_disconnect,
    read_json_body,
    read_upload,
)
from app.core import errors
from app.imaging.pipeline import CropBox, parse_crop
from app.services import avatars as service

router = APIRouter(tags=["avatars"])

CROP_FIELD = "crop"
_CROP_HELP = (
    "Optional `x,y,width,height` in pixels of the upright image: the avatar is this region "
    "(its centre square for the thumbnails) instead of the whole picture. A form field, a JSON "
    "field or a query parameter; outside the image it is a 422 `invalid_crop`."
)
_INLINE_HELP = (
    "A variant name (e.g. `thumb`, `thumb-64`): the document then carries that image as a "
    "`data:image/webp;base64,...` URI, for e-mails and pages that must not fetch anything. "
    "A name no avatar can have is 422 `unknown_variant` before anything is done. On a read, "
    "an image above AVATAR_INLINE_MAX_BYTES is 422 `inline_too_large`; on an upload, which has "
    "been stored by then, the document leaves `inline` out and says why in `inline_omitted`."
)
InlineQuery = Annotated[str | None, Query(description=_INLINE_HELP, max_length=64)]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "A JPEG, PNG, GIF or WebP image (HEIC and AVIF "
                            "where enabled). The type is read from the content, never from the "
                            "file name.",
                        },
                        CROP_FIELD: {"type": "string", "description": _CROP_HELP},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": [BASE64_FIELD],
                    "properties": {
                        BASE64_FIELD: {
                            "type": "string",
                            "description": "The image as base64 (standard or URL-safe) or as "
                            "a `data:image/...;base64,...` URI. Its length is checked before "
                            "it is decoded; malformed base64 is 422 `invalid_base64`.",
                        },
                        "filename": {"type": "string", "description": "Informational only."},
                        CROP_FIELD: {"type": "string", "description": _CROP_HELP},
                    },
                },
                "example": {
                    "image_base64": "data:image/png;base64,iVBORw0KGgo...",
                    "filename": "me.png",
                },
            },
        },
    }
}

_DOCUMENT_HEADERS = {
    "ETag": {
        "description": "Of the document; send it back in If-None-Match.",
        "schema": {"type": "string"},
    },
}


class AvatarPatch(BaseModel):
    crop: str | list[int] | None = Field(
        description="`x,y,width,height` (or a list of four integers) in pixels of the stored "
        "original: the box the squares are cut from; null for its centre square.",
        examples=["100,40,600,600", [100, 40, 600, 600], None],
    )


def _crop_box(value: str | list[int] | None) -> CropBox | None:
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) != 4:
            raise errors.InvalidCrop("The crop must be four whole numbers: x,y,width,height.")
        value = ",".join(str(number) for number in value)
    return parse_crop(value)


IDEMPOTENCY_ERRORS = (
    errors.InvalidIdempotencyKey,
    errors.IdempotencyKeyMismatch,
    errors.IdempotencyKeyInUse,
)

_UPLOAD_ERRORS = (
    errors.NotAuthenticated,
    errors.RequestTimeout,
    errors.PayloadTooLarge,
    errors.UnsupportedContentType,
    errors.UnsupportedFormat,
    errors.CorruptImage,
    errors.TooManyPixels,
    errors.DimensionsTooLarge,
    errors.TooManyFrames,
    errors.ImageTooComplex,
    errors.InvalidCrop,
    errors.MissingFile,
    errors.InvalidBase64,
    errors.UnknownVariant,
    errors.InlineTooLarge,
    errors.RateLimited,
    errors.ServerBusy,
    errors.StorageUnavailable,
    errors.InsufficientStorage,
    errors.DatabaseUnavailable,
    *IDEMPOTENCY_ERRORS,
)


@router.post(
    "/users/me/avatar",
    status_code=status.HTTP_201_CREATED,
    response_model=AvatarPublic,
    summary="Upload or replace the caller's avatar",
    description="Multipart (`file`) or JSON (`image_base64`). Validated, sanitised, sized and "
    "stored in one call; the previous avatar is replaced.",
    openapi_extra=_UPLOAD_BODY,
    responses={201: {"headers": _DOCUMENT_HEADERS}, **problem_responses(*_UPLOAD_ERRORS)},
)
async def upload_avatar(
    request: Request,
    user_id: UploadingUser,
    runtime: RuntimeDep,
    write: DocumentDep,
    idempotency: IdempotencyDep,
    crop: Annotated[str | None, Query(description=_CROP_HELP)] = None,
    inline: InlineQuery = None,
) -> Response:
    # Every parameter is checked before the work: a refused request changes nothing.
    settings, options = runtime.settings, runtime.options
    check_inline_name(inline, options)
    crop_box = parse_crop(crop) if crop is not None else None
    # A place in the image pool is taken before the body is read: when the pool is full the
    # request is refused (503) having buffered nothing.
    with runtime.pool.reserve() as place:
        upload = await read_upload(
            request,
            settings.max_upload_bytes,
            idle_timeout=settings.body_idle_timeout,
            total_timeout=settings.body_timeout,
        )
        if crop_box is None and CROP_FIELD in upload.fields:
            crop_box = parse_crop(upload.fields[CROP_FIELD])

        async def replace() -> Response:
            async with abandoned_on_disconnect(request, place):
                avatar = await service.replace_avatar(
                    runtime.writes(place),  # the place reserved before the body was read
                    user_id=user_id,
                    upload=upload.data,
                    crop=crop_box,
                )
            return await write(avatar, inline=inline, public=False, status_code=201, committed=True)

        return await idempotency.run(upload_parts(upload.data, upload.fields), replace)


# A crop change is a few dozen bytes of JSON; anything much longer is not one.
PATCH_MAX_BYTES = 4096


@router.patch(
    "/users/me/avatar",
    response_model=AvatarPublic,
    summary="Change the crop of the caller's avatar without a new upload",
    description="Every square size (and an animation's still) is derived again from the stored "
    "original, cut from `crop`; the original itself is kept, so the crop can be changed again. "
    f"The body (JSON, at most {PATCH_MAX_BYTES} bytes) is read only after the token and the rate "
    "limit have passed, within the body timeouts.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": AvatarPatch.model_json_schema()}},
        }
    },
    responses={
        200: {"headers": _DOCUMENT_HEADERS},
        **problem_responses(
            errors.NotAuthenticated,
            errors.AvatarNotFound,
            errors.AvatarChanged,
            errors.PayloadTooLarge,
            errors.InvalidCrop,
            errors.ImageTooComplex,
            *JSON_BODY_ERRORS,
            errors.RateLimited,
            errors.ServerBusy,
            errors.StorageUnavailable,
            errors.InsufficientStorage,
            errors.DatabaseUnavailable,
            *IDEMPOTENCY_ERRORS,
        ),
    },
)
async def update_avatar_crop(
    request: Request,
    user_id: UploadingUser,
    runtime: RuntimeDep,
    write: DocumentDep,
    idempotency: IdempotencyDep,
) -> Response:
    # No body parameter: FastAPI reads nothing before the token and the rate limit have passed.
    body = await read_json_body(
        request,
        PATCH_MAX_BYTES,
        idle_timeout=runtime.settings.body_idle_timeout,
        total_timeout=runtime.settings.body_timeout,
    )
    try:
        patch = AvatarPatch.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    box = _crop_box(patch.crop)

    async def recrop() -> Response:
        with runtime.pool.reserve() as place:
            async with abandoned_on_disconnect(request, place):
                avatar = await service.recrop_avatar(
                    runtime.writes(place), user_id=user_id, crop=box
                )
        return await write(avatar, inline=None, public=False, committed=True)

    # The box, not the JSON: "0,0,200,200" and [0, 0, 200, 200] are one request.
    return await idempotency.run([repr(box).encode()], recrop)


_READ_ERRORS = (errors.AvatarNotFound, errors.UnknownVariant, errors.InlineTooLarge)
_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": _DOCUMENT_HEADERS},
    304: {"description": "Not modified: If-None-Match matched the document's ETag."},
}


@router.get(
    "/users/me/avatar",
    response_model=AvatarPublic,
    summary="The caller's avatar",
    responses={**_READ_RESPONSES, **problem_responses(errors.NotAuthenticated, *_READ_ERRORS)},
)
async def read_my_avatar(
    user_id: CurrentUser, reads: ReadsDep, write: DocumentDep, inline: InlineQuery = None
) -> Response:
    avatar = await service.read_avatar(reads=reads, user_id=user_id)
    return await write(avatar, inline=inline, public=False)


@router.delete(
    "/users/me/avatar",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete the caller's avatar and its files",
    responses=problem_responses(
        errors.NotAuthenticated, errors.AvatarNotFound, *IDEMPOTENCY_ERRORS
    ),
)
async def delete_my_avatar(
    user_id: CurrentUser, sessions: SessionsDep, storage: StorageDep, idempotency: IdempotencyDep
) -> Response:
    async def delete() -> Response:
        await service.delete_avatar(sessions=sessions, storage=storage, user_id=user_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return await idempotency.run([], delete)


@router.get(
    "/users/{user_id}/avatar",
    response_model=AvatarPublic,
    summary="Any user's avatar, public (no authentication)",
    responses={**_READ_RESPONSES, **problem_responses(*_READ_ERRORS)},
)
async def read_avatar(
    user_id: PathUserId, reads: ReadsDep, write: DocumentDep, inline: InlineQuery = None
) -> Response:
    avatar = await service.read_avatar(reads=reads, user_id=user_id)
    return await write(avatar, inline=inline, public=True)
