"""Serving stored files. Only keys the service made are reachable; nothing outside the store."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request, Response

from app.api.deps import StorageDep
from app.api.problems import problem_responses
from app.core.errors import ResourceNotFound
from app.storage.base import content_type_for, is_valid_key

router = APIRouter(tags=["media"])

IMMUTABLE = "public, max-age=31536000, immutable"
# The files are images: nothing in them may run, load or frame anything.
MEDIA_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


def _etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


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
    etag = _etag(data)
    headers = {
        "ETag": etag,
        "Cache-Control": IMMUTABLE,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": MEDIA_CSP,
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if _matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else data
    response = Response(body, media_type=content_type_for(key), headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(data))
    return response


router.add_api_route("/media/{key:path}", read_media, methods=["HEAD"], include_in_schema=False)
