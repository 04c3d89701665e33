"""Entity tags, If-None-Match, and the one way an image goes out (headers included)."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

# Versioned objects never change: cache them for a year.
IMMUTABLE = "public, max-age=31536000, immutable"
# The files are images: nothing in them may run, load or frame anything.
MEDIA_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def client_has(request: Request, etag: str) -> bool:
    """True when the request's If-None-Match names ``etag`` (weak comparison) or ``*``."""
    header = request.headers.get("if-none-match", "")
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in candidates or etag in candidates


def image_response(
    request: Request, data: bytes, *, content_type: str, cache_control: str
) -> Response:
    """An image's bytes with the headers every image carries (ETag, nosniff, a CSP that runs
    nothing, cross-origin embedding), or 304 when the client has them."""
    etag = etag_of(data)
    headers = {
        "ETag": etag,
        "Cache-Control": cache_control,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": MEDIA_CSP,
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if client_has(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=content_type, headers=headers)
