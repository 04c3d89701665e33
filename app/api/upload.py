"""Reading an upload body within the byte limit, after authentication has passed.

The route declares no body parameter, so FastAPI reads nothing before the auth dependency runs.
Then the limit is applied twice: from ``Content-Length`` before a byte is read, and by counting
while streaming, so a body without a length (chunked) is cut off as soon as it passes the limit.
Parts are kept in memory (they are bounded by the limit): no temporary file is ever written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from app.core.errors import (
    ClientDisconnected,
    InvalidRequest,
    MissingFile,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedContentType,
)

# Room for the multipart envelope (boundaries, part headers, a file name) around the file.
ENVELOPE_BYTES = 16 * 1024
FILE_FIELD = "file"


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The upload is larger than the limit of {limit} bytes.")


def check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise InvalidRequest("The Content-Length header is not a number.") from None
    if length > limit:
        raise _too_large(limit - ENVELOPE_BYTES)


async def limited_stream(
    request: Request, limit: int, *, idle_timeout: float, total_timeout: float
) -> AsyncIterator[bytes]:
    """The body, cut off past ``limit`` bytes, after ``idle_timeout`` seconds without a byte, or
    after ``total_timeout`` seconds in all: a client trickling a byte at a time holds a
    connection for a bounded time, never a worker."""
    received = 0
    deadline = asyncio.get_running_loop().time() + total_timeout
    chunks = request.stream().__aiter__()
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(min(idle_timeout, max(remaining, 0))):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(
                f"The body did not arrive in time (at most {idle_timeout:g} s between chunks, "
                f"{total_timeout:g} s in all)."
            ) from None
        except ClientDisconnect:
            raise ClientDisconnected("The client closed the connection mid-upload.") from None
        received += len(chunk)
        if received > limit:
            raise _too_large(limit - ENVELOPE_BYTES)
        yield chunk


@dataclass(frozen=True)
class Upload:
    data: bytes
    fields: dict[str, str]  # the body's text fields (e.g. ``crop``)


async def read_upload(
    request: Request, max_bytes: int, *, idle_timeout: float, total_timeout: float
) -> Upload:
    """Return the ``file`` part and the text fields of a multipart/form-data body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedContentType("Send the image as multipart/form-data with the field 'file'.")
    body_limit = max_bytes + ENVELOPE_BYTES
    check_declared_length(request, body_limit)

    parser = MultiPartParser(
        request.headers,
        limited_stream(request, body_limit, idle_timeout=idle_timeout, total_timeout=total_timeout),
        max_files=1,
        max_fields=8,
        max_part_size=64 * 1024,
    )
    parser.spool_max_size = body_limit  # keep the (bounded) file in memory
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"The multipart body is malformed: {exc.message}") from None
    try:
        upload = form.get(FILE_FIELD)
        if not isinstance(upload, UploadFile):
            raise MissingFile("The multipart body has no file in the field 'file'.")
        data = await upload.read(max_bytes + 1)
        fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return Upload(data, fields)
