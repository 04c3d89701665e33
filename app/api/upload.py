"""Reading an upload body (multipart or base64 JSON) within the byte limit, after
authentication has passed.

The route declares no body parameter, so FastAPI reads nothing before the auth dependency runs.
Then the limit is applied twice: from ``Content-Length`` before a byte is read, and by counting
while streaming, so a body without a length (chunked) is cut off as soon as it passes the limit.
Parts are kept in memory (they are bounded by the limit): no temporary file is ever written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from app.core.errors import (
    ClientDisconnected,
    InvalidBase64,
    InvalidRequest,
    MissingFile,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedContentType,
)
from app.imaging.pool import Place

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
) -> AsyncGenerator[bytes, None]:
    """The body, cut off past ``limit`` bytes, after ``idle_timeout`` seconds without a byte, or
    after ``total_timeout`` seconds in all: a client trickling a byte at a time holds its
    connection, and the image-pool place reserved for it, for a bounded time only."""
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
    """The image and the text fields of an upload body: multipart/form-data (the ``file``
    part) or JSON (``image_base64``, plain base64 or a ``data:`` URI)."""
    content_type = request.headers.get("content-type", "").lower()

    def body(limit: int) -> AsyncGenerator[bytes, None]:
        check_declared_length(request, limit)
        return limited_stream(
            request, limit, idle_timeout=idle_timeout, total_timeout=total_timeout
        )

    if content_type.startswith("multipart/form-data"):
        return await _read_multipart(request, body(max_bytes + ENVELOPE_BYTES), max_bytes)
    if content_type.split(";")[0].strip() == "application/json":
        return await _read_json(body(base64_limit(max_bytes) + ENVELOPE_BYTES), max_bytes)
    raise UnsupportedContentType(
        "Send the image as multipart/form-data (field 'file') or as JSON ({\"image_base64\": ...})."
    )


async def _read_multipart(
    request: Request, stream: AsyncGenerator[bytes, None], max_bytes: int
) -> Upload:
    parser = MultiPartParser(
        request.headers, stream, max_files=1, max_fields=8, max_part_size=64 * 1024
    )
    parser.spool_max_size = max_bytes + ENVELOPE_BYTES  # keep the (bounded) file in memory
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


BASE64_FIELD = "image_base64"
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)
_WHITESPACE = re.compile(rb"\s+")
_BASE64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def base64_limit(max_bytes: int) -> int:
    """The longest base64 text (plus a data: URI prefix) that can hold ``max_bytes``."""
    return 4 * -(-max_bytes // 3) + 256


def parse_json(raw: bytes) -> object:
    """A JSON body, or 422 ``invalid_request``: malformed text, bad UTF-8, and nesting deeper
    than the parser's recursion allows (``[[[[...``) alike."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The body is not valid JSON.") from None
    except RecursionError:
        raise InvalidRequest("The JSON body is nested too deeply.") from None


# What ``read_json_body`` answers besides a body over its size (``PayloadTooLarge``, which a
# route may turn into its own), for the ``problem_responses`` of the routes that call it.
JSON_BODY_ERRORS = (RequestTimeout, UnsupportedContentType, InvalidRequest)


async def read_json_body(
    request: Request, max_bytes: int, *, idle_timeout: float, total_timeout: float
) -> object:
    """A small JSON body (``application/json``), read within ``max_bytes`` and the body
    timeouts, after authentication has passed."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise UnsupportedContentType("Send the body as application/json.")
    try:
        check_declared_length(request, max_bytes)
        stream = limited_stream(
            request, max_bytes, idle_timeout=idle_timeout, total_timeout=total_timeout
        )
        raw = b"".join([chunk async for chunk in stream])
    except PayloadTooLarge:
        raise PayloadTooLarge(f"The body is larger than {max_bytes} bytes.") from None
    return parse_json(raw)


async def _read_json(stream: AsyncIterator[bytes], max_bytes: int) -> Upload:
    raw = b"".join([chunk async for chunk in stream])
    document = parse_json(raw)
    if not isinstance(document, dict) or not isinstance(document.get(BASE64_FIELD), str):
        raise MissingFile(f"The JSON body has no string field '{BASE64_FIELD}'.")
    fields = {
        name: value
        for name, value in document.items()
        if name != BASE64_FIELD and isinstance(value, str)
    }
    return Upload(decode_base64_image(document[BASE64_FIELD], max_bytes), fields)


def decode_base64_image(text: str, max_bytes: int) -> bytes:
    """Plain base64 (standard or URL-safe, line breaks allowed) or a ``data:...;base64,`` URI.
    The encoded length is checked before a byte is decoded."""
    match = _DATA_URI.match(text)
    if match is None and text.startswith("data:"):
        raise InvalidBase64("A data: URI must be base64 (data:image/...;base64,...).")
    encoded = text[match.end() :] if match else text
    if len(encoded) > base64_limit(max_bytes):
        raise _too_large(max_bytes)
    compact = _WHITESPACE.sub(b"", encoded.encode("ascii", errors="replace"))
    compact = compact.replace(b"-", b"+").replace(b"_", b"/")
    if len(compact) % 4:
        compact += b"=" * (-len(compact) % 4)
    if not compact or not _BASE64_ALPHABET.fullmatch(compact):
        raise InvalidBase64("The image is not valid base64.")
    try:
        data = base64.b64decode(compact, validate=True)
    except binascii.Error:
        raise InvalidBase64("The image is not valid base64.") from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


@contextlib.asynccontextmanager
async def abandoned_on_disconnect(request: Request, place: Place) -> AsyncIterator[None]:
    """While the block runs (after the body was read), a client that closes its connection
    abandons ``place``: its image job is stopped and its worker replaced at once, instead of
    holding a pool place until the job ends or reaches its deadline for an answer nobody reads.
    Only the image job is stopped; storage and database steps already under way finish or
    compensate as for any failure."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        place.abandon()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
