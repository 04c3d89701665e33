"""Avatar routes: HTTP in and out only; the work happens in ``app.services.avatars``."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from app.api.caching import client_has, etag_of
from app.api.deps import (
    BaseUrl,
    CurrentUser,
    PathUserId,
    PipelineOptionsDep,
    PoolDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
    UploadingUser,
)
from app.api.idempotency import IdempotencyDep, upload_parts
from app.api.problems import problem_responses
from app.api.schemas import AvatarPublic, InlineImage
from app.api.upload import (
    BASE64_FIELD,
    FILE_FIELD,
    abandoned_on_disconnect,
    read_json_body,
    read_upload,
)
from app.core import errors
from app.core.config import Settings
from app.db.models import Avatar
from app.imaging.pipeline import CropBox, PipelineOptions, parse_crop
from app.services import avatars as service
from app.storage.base import Storage

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


@dataclass(frozen=True)
class DocumentWriter:
    """Renders an avatar document for this request: URLs for its base, ``?inline``, an ETag,
    and 304 when the client has the document already."""

    request: Request
    storage: Storage
    settings: Settings
    base_url: str

    async def __call__(
        self,
        avatar: Avatar,
        *,
        inline: str | None,
        public: bool,
        status_code: int = 200,
        committed: bool = False,
    ) -> Response:
        """``committed``: the request has changed the avatar already, so nothing may turn its
        answer into an error any more: an inline image that cannot be given is left out, and
        ``inline_omitted`` says why."""
        document = AvatarPublic.build(avatar, storage=self.storage, base_url=self.base_url)
        if inline is not None:
            try:
                document.inline = await _inline(
                    avatar, inline, storage=self.storage, settings=self.settings
                )
            except (errors.InvalidRequest, errors.ServiceUnavailable) as exc:
                if not committed:
                    raise
                document.inline_omitted = f"{exc.code}: {exc.detail}"
        body = document.model_dump_json().encode()
        etag = etag_of(body)
        headers = {
            "ETag": etag,
            # Revalidate every time (cheap with If-None-Match): the avatar may change any time.
            "Cache-Control": ("public" if public else "private") + ", no-cache",
        }
        if status_code == 200 and client_has(self.request, etag):
            return Response(status_code=304, headers=headers)
        return Response(
            body, status_code=status_code, media_type="application/json", headers=headers
        )


def get_document_writer(
    request: Request, storage: StorageDep, settings: SettingsDep, base_url: BaseUrl
) -> DocumentWriter:
    return DocumentWriter(request, storage, settings, base_url)


DocumentDep = Annotated[DocumentWriter, Depends(get_document_writer)]


async def _inline(
    avatar: Avatar, name: str, *, storage: Storage, settings: Settings
) -> InlineImage:
    try:
        variant = avatar.variant(name)
    except KeyError:
        names = ", ".join(v["name"] for v in avatar.variants)
        raise errors.UnknownVariant(f"No variant {name!r}; this avatar has: {names}.") from None
    if variant["bytes"] > settings.inline_max_bytes:
        raise errors.InlineTooLarge(
            f"The {name!r} image is {variant['bytes']} bytes; at most "
            f"{settings.inline_max_bytes} are inlined. Use a smaller variant or its URL."
        )
    try:
        data = await storage.get(variant["key"])
    except FileNotFoundError:
        raise errors.StorageUnavailableError("A stored file is missing.") from None
    encoded = base64.b64encode(data).decode("ascii")
    return InlineImage(
        variant=name, data_uri=f"data:{variant['content_type']};base64,{encoded}", bytes=len(data)
    )


def check_inline_name(name: str | None, options: PipelineOptions) -> None:
    """Refuse, before any work, a variant name no avatar made with these settings can have."""
    if name is None:
        return
    known = ["original", *(square for square, _side in options.squares()), "still"]
    if name not in known:
        raise errors.UnknownVariant(f"No variant {name!r}; avatars have: {', '.join(known)}.")


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
    errors.StorageUnavailableError,
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
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    pool: PoolDep,
    options: PipelineOptionsDep,
    write: DocumentDep,
    idempotency: IdempotencyDep,
    crop: Annotated[str | None, Query(description=_CROP_HELP)] = None,
    inline: InlineQuery = None,
) -> Response:
    # Every parameter is checked before the work: a refused request changes nothing.
    check_inline_name(inline, options)
    crop_box = parse_crop(crop) if crop is not None else None
    # A place in the image pool is taken before the body is read: when the pool is full the
    # request is refused (503) having buffered nothing.
    with pool.reserve() as place:
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
                    sessions=sessions,
                    storage=storage,
                    pool=pool,
                    options=options,
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
            errors.RequestTimeout,
            errors.PayloadTooLarge,
            errors.UnsupportedContentType,
            errors.InvalidCrop,
            errors.ImageTooComplex,
            errors.InvalidRequest,
            errors.RateLimited,
            errors.ServerBusy,
            errors.StorageUnavailableError,
            errors.InsufficientStorage,
            errors.DatabaseUnavailable,
            *IDEMPOTENCY_ERRORS,
        ),
    },
)
async def update_avatar_crop(
    request: Request,
    user_id: UploadingUser,
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    pool: PoolDep,
    options: PipelineOptionsDep,
    write: DocumentDep,
    idempotency: IdempotencyDep,
) -> Response:
    # No body parameter: FastAPI reads nothing before the token and the rate limit have passed.
    body = await read_json_body(
        request,
        PATCH_MAX_BYTES,
        idle_timeout=settings.body_idle_timeout,
        total_timeout=settings.body_timeout,
    )
    try:
        patch = AvatarPatch.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    box = _crop_box(patch.crop)

    async def recrop() -> Response:
        with pool.reserve() as place:
            async with abandoned_on_disconnect(request, place):
                avatar = await service.recrop_avatar(
                    sessions=sessions,
                    storage=storage,
                    pool=pool,
                    options=options,
                    user_id=user_id,
                    crop=box,
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
    user_id: CurrentUser, sessions: SessionsDep, write: DocumentDep, inline: InlineQuery = None
) -> Response:
    avatar = await service.get_avatar(sessions=sessions, user_id=user_id)
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
    user_id: PathUserId, sessions: SessionsDep, write: DocumentDep, inline: InlineQuery = None
) -> Response:
    avatar = await service.get_avatar(sessions=sessions, user_id=user_id)
    return await write(avatar, inline=inline, public=True)
