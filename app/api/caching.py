"""Entity tags: one way to name a response's bytes, and to honour If-None-Match."""

from __future__ import annotations

import hashlib

from starlette.requests import Request


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def client_has(request: Request, etag: str) -> bool:
    """True when the request's If-None-Match names ``etag`` (weak comparison) or ``*``."""
    header = request.headers.get("if-none-match", "")
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in candidates or etag in candidates
