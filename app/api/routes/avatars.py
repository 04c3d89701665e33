"""Avatar routes: HTTP in and out only; the work happens in ``app.services.avatars``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.api.deps import (
    BaseUrl,
    CurrentUser,
    PipelineOptionsDep,
    PoolDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
    UploadingUser,
)
from app.api.problems import problem_responses
from app.api.schemas import AvatarPublic
from app.api.upload import FILE_FIELD, read_upload
from app.core import errors
from app.imaging.pipeline import parse_crop
from app.services import avatars as service

router = APIRouter(tags=["avatars"])

CROP_FIELD = "crop"
_CROP_HELP = (
    "Optional `x,y,width,height` in pixels of the upright image: the avatar is this region "
    "(its centre square for the thumbnails) instead of the whole picture. A form field or a "
    "query parameter; outside the image it is a 422 `invalid_crop`."
)

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
            }
        },
    }
}


@router.post(
    "/users/me/avatar",
    status_code=status.HTTP_201_CREATED,
    response_model=AvatarPublic,
    summary="Upload or replace the caller's avatar",
    openapi_extra=_UPLOAD_BODY,
    responses=problem_responses(
        errors.NotAuthenticated,
        errors.PayloadTooLarge,
        errors.UnsupportedContentType,
        errors.UnsupportedFormat,
        errors.CorruptImage,
        errors.TooManyPixels,
        errors.DimensionsTooLarge,
        errors.TooManyFrames,
        errors.InvalidCrop,
        errors.MissingFile,
        errors.RequestTimeout,
        errors.RateLimited,
        errors.ServerBusy,
        errors.StorageUnavailableError,
        errors.DatabaseUnavailable,
    ),
)
async def upload_avatar(
    request: Request,
    user_id: UploadingUser,
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    pool: PoolDep,
    options: PipelineOptionsDep,
    base_url: BaseUrl,
    crop: Annotated[str | None, Query(description=_CROP_HELP)] = None,
) -> AvatarPublic:
    crop_box = parse_crop(crop) if crop is not None else None
    # A place in the image pool is taken before the body is read: when the pool is full the
    # request is refused (503) having buffered nothing.
    with pool.reserve():
        upload = await read_upload(
            request,
            settings.max_upload_bytes,
            idle_timeout=settings.body_idle_timeout,
            total_timeout=settings.body_timeout,
        )
        if crop_box is None and CROP_FIELD in upload.fields:
            crop_box = parse_crop(upload.fields[CROP_FIELD])
        avatar = await service.replace_avatar(
            sessions=sessions,
            storage=storage,
            pool=pool,
            options=options,
            user_id=user_id,
            upload=upload.data,
            crop=crop_box,
        )
    return AvatarPublic.build(avatar, storage=storage, base_url=base_url)


@router.get(
    "/users/me/avatar",
    response_model=AvatarPublic,
    summary="The caller's avatar",
    responses=problem_responses(errors.NotAuthenticated, errors.AvatarNotFound),
)
async def read_my_avatar(
    user_id: CurrentUser, sessions: SessionsDep, storage: StorageDep, base_url: BaseUrl
) -> AvatarPublic:
    avatar = await service.get_avatar(sessions=sessions, user_id=user_id)
    return AvatarPublic.build(avatar, storage=storage, base_url=base_url)


@router.delete(
    "/users/me/avatar",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete the caller's avatar and its files",
    responses=problem_responses(errors.NotAuthenticated, errors.AvatarNotFound),
)
async def delete_my_avatar(
    user_id: CurrentUser, sessions: SessionsDep, storage: StorageDep
) -> Response:
    await service.delete_avatar(sessions=sessions, storage=storage, user_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/users/{user_id}/avatar",
    response_model=AvatarPublic,
    summary="Any user's avatar, public (no authentication)",
    responses=problem_responses(errors.AvatarNotFound),
)
async def read_avatar(
    user_id: str, sessions: SessionsDep, storage: StorageDep, base_url: BaseUrl
) -> AvatarPublic:
    avatar = await service.get_avatar(sessions=sessions, user_id=user_id)
    return AvatarPublic.build(avatar, storage=storage, base_url=base_url)
