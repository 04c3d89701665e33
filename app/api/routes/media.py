"""Serving stored files. Only keys the service made are reachable; nothing outside the store."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.caching import IMMUTABLE, image_response
from app.api.deps import StorageDep
from app.api.problems import problem_responses
from app.core.errors import ResourceNotFound
from app.storage.base import content_type_for, is_valid_key

router = APIRouter(tags=["media"])


@router.get(
    "/media/{key:path}",
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
    if not is_valid_key(key):
        raise ResourceNotFound("No such file.")
    try:
        data = await storage.get(key)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ResourceNotFound("No such file.") from None
    return image_response(
        request, data, content_type=content_type_for(key), cache_control=IMMUTABLE
    )
