"""Reading an upload body within the byte limit, after authentication has passed.

The route declares no body parameter, so FastAPI reads nothing before the auth dependency runs.
Then the limit is applied twice: from ``Content-Length`` before a byte is read, and by counting
while streaming, so a body without a length (chunked) is cut off as soon as it passes the limit.
Parts are kept in memory (they are bounded by the limit): no temporary file is ever written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app.core.errors import InvalidRequest, MissingFile, PayloadTooLarge, UnsupportedContentType

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


async def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit - ENVELOPE_BYTES)
        yield chunk


@dataclass(frozen=True)
class Upload:
    data: bytes
    fields: dict[str, str]  # the body's text fields (e.g. ``crop``)


async def read_multipart_file(request: Request, max_bytes: int) -> bytes:
    """Return the bytes of the ``file`` part of a multipart/form-data body."""
    return (await read_upload(request, max_bytes)).data


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """Return the ``file`` part and the text fields of a multipart/form-data body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedContentType("Send the image as multipart/form-data with the field 'file'.")
    body_limit = max_bytes + ENVELOPE_BYTES
    check_declared_length(request, body_limit)

    parser = MultiPartParser(
        request.headers,
        limited_stream(request, body_limit),
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
