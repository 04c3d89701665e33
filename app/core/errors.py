"""The service's errors: each carries its HTTP status, a stable machine-readable code and a title.

One handler (``app.api.problems``) renders every one of them as RFC 9457 problem+json::

    AppError
    ├── NotAuthenticated            401 not_authenticated
    ├── AvatarNotFound              404 avatar_not_found
    ├── ResourceNotFound            404 not_found
    ├── MethodNotAllowed            405 method_not_allowed
    ├── AvatarChanged               409 avatar_changed
    ├── IdempotencyKeyInUse         409 idempotency_key_in_use (with Retry-After)
    ├── PreconditionFailed          412 precondition_failed (If-None-Match matched on a POST)
    ├── PayloadTooLarge             413 image_too_large
    │   └── BodyTooLarge            413 body_too_large (a JSON body over its route's cap)
    ├── ClientDisconnected          400 client_disconnected (the client is gone; for logs)
    ├── RequestTimeout              408 request_timeout (a body, or the headers, too slow)
    ├── HeadersTooLarge             431 headers_too_large (from the HTTP protocol)
    ├── InvalidHttpRequest          400 invalid_http_request (from the HTTP protocol)
    ├── UnsupportedContentType      415 unsupported_content_type
    ├── InvalidRequest              422 invalid_request
    │   ├── MissingFile             422 missing_file
    │   ├── InvalidBase64           422 invalid_base64
    │   ├── UnknownVariant          422 unknown_variant
    │   ├── InlineTooLarge          422 inline_too_large
    │   ├── InvalidIdempotencyKey   422 invalid_idempotency_key
    │   ├── IdempotencyKeyMismatch  422 idempotency_key_mismatch
    │   ├── NoUserIds               422 no_user_ids (a batch lookup naming nobody)
    │   ├── TooManyUserIds          422 too_many_user_ids (a batch lookup over its limit)
    │   └── InvalidUserId           422 invalid_user_id (a batch lookup naming no valid id)
    ├── ImageError                  (the imaging pipeline raises only these)
    │   ├── UnsupportedFormat       415 unsupported_format
    │   ├── CorruptImage            422 corrupt_image
    │   ├── TooManyPixels           422 too_many_pixels
    │   ├── DimensionsTooLarge      422 dimensions_too_large
    │   ├── TooManyFrames           422 too_many_frames
    │   ├── ImageTooComplex         422 image_too_complex (too many scans or chunks, or past
    │   │                               the image job deadline)
    │   └── InvalidCrop             422 invalid_crop
    ├── RateLimited                 429 rate_limited (with Retry-After)
    ├── ServerBusy                  503 server_busy (with Retry-After)
    ├── InsufficientStorage         507 insufficient_storage (the disk is full; with Retry-After)
    └── ServiceUnavailable          503 service_unavailable
        ├── DatabaseUnavailable     503 database_unavailable
        ├── StorageUnavailable 503 storage_unavailable
        └── IdentityProviderUnavailable 503 identity_provider_unavailable

Nothing here imports a web framework: services and the pipeline raise these, the API renders them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

PROBLEM_TYPE_PREFIX = "urn:avatar-service:problem:"


class AppError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"
    # Headers every answer of this error carries.
    fixed_headers: ClassVar[Mapping[str, str]] = {}
    # Seconds the client is asked to wait before retrying (Retry-After), unless the raiser
    # says otherwise; None: the answer carries no Retry-After.
    retry_after: ClassVar[int | None] = None

    def __init_subclass__(
        cls,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        retry_after: int | None = None,
        **kwargs: object,
    ) -> None:
        """An error is declared in its class line (``class X(AppError, status=404, code=...,
        title=...)``); what it leaves out, it takes from its base."""
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code
        if title is not None:
            cls.title = title
        if retry_after is not None:
            cls.retry_after = retry_after

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        retry_after: int | None = None,
    ):
        self.detail = detail or self.title
        self.headers = {**self.fixed_headers, **(headers or {})}
        wait = self.retry_after if retry_after is None else retry_after
        if wait is not None:
            self.headers["Retry-After"] = str(wait)
        super().__init__(self.detail)

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.code

    def problem_fields(self) -> dict[str, object]:
        """The RFC 9457 members every problem+json answer carries."""
        return {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }


class NotAuthenticated(AppError, status=401, code="not_authenticated", title="Not authenticated"):
    fixed_headers = {"WWW-Authenticate": 'Bearer realm="avatar-service"'}


class AvatarNotFound(AppError, status=404, code="avatar_not_found", title="Avatar not found"):
    """The user has no avatar (or it was deleted while the request ran)."""


class ResourceNotFound(AppError, status=404, code="not_found", title="Not found"):
    """No route, file or rendition at this path."""


class MethodNotAllowed(AppError, status=405, code="method_not_allowed", title="Method not allowed"):
    """The path exists; the method does not."""


class AvatarChanged(AppError, status=409, code="avatar_changed", title="Avatar changed meanwhile"):
    """Another request replaced or deleted the avatar between this one's read and its write:
    nothing was kept, and the client may retry."""


class PayloadTooLarge(AppError, status=413, code="image_too_large", title="Upload too large"):
    """An image upload over the configured byte limit, told by Content-Length or counted while
    the body streams in."""


class BodyTooLarge(PayloadTooLarge, code="body_too_large", title="Request body too large"):
    """A JSON body (not an image) over the cap of its route."""


class PreconditionFailed(
    AppError, status=412, code="precondition_failed", title="Precondition failed"
):
    """If-None-Match named the current representation on a method other than GET or HEAD,
    which RFC 9110 answers with 412 where GET answers 304: the client's copy is current."""


class ClientDisconnected(
    AppError, status=400, code="client_disconnected", title="Client disconnected"
):
    """The client went away mid-upload or before its image job ran; nobody reads the answer,
    the log does."""


class RequestTimeout(AppError, status=408, code="request_timeout", title="Request too slow"):
    fixed_headers = {"Connection": "close"}


class HeadersTooLarge(
    AppError, status=431, code="headers_too_large", title="Request headers too large"
):
    """Raised by the server's HTTP protocol, before the application sees the request."""


class InvalidHttpRequest(
    AppError, status=400, code="invalid_http_request", title="Invalid HTTP request"
):
    """Malformed HTTP/1.1 the server can still answer (a broken request line or header)."""


class UnsupportedContentType(
    AppError, status=415, code="unsupported_content_type", title="Unsupported request content type"
):
    """An upload that is neither multipart/form-data nor application/json."""


class InvalidRequest(AppError, status=422, code="invalid_request", title="Invalid request"):
    """A request the service cannot read: a malformed body, header or parameter."""


class MissingFile(InvalidRequest, code="missing_file", title="No file in the upload"):
    """A multipart body without the field ``file``, or a JSON body without its image string."""


class InvalidBase64(InvalidRequest, code="invalid_base64", title="Invalid base64 image"):
    """A JSON upload whose image string is not base64 (or a data: URI that is not)."""


class UnknownVariant(InvalidRequest, code="unknown_variant", title="No such image size"):
    """A size or variant name the avatar does not have."""


class InlineTooLarge(InvalidRequest, code="inline_too_large", title="Image too large to inline"):
    """``?inline=`` asked for a variant larger than the inline cap; link to it instead."""


class InvalidIdempotencyKey(
    InvalidRequest, code="invalid_idempotency_key", title="Invalid Idempotency-Key"
):
    """An Idempotency-Key header that is empty, too long or not printable ASCII."""


class IdempotencyKeyMismatch(
    InvalidRequest,
    code="idempotency_key_mismatch",
    title="Idempotency-Key reused for another request",
):
    """The key was used before for another request (another body, method or query)."""


class NoUserIds(InvalidRequest, code="no_user_ids", title="No user ids"):
    """A batch lookup naming nobody."""


class TooManyUserIds(InvalidRequest, code="too_many_user_ids", title="Too many user ids"):
    """A batch lookup over its limit of user ids."""


class InvalidUserId(InvalidRequest, code="invalid_user_id", title="Invalid user id"):
    """A user id no token could carry; a single avatar route answers 404 for it, a batch names
    the culprit instead of answering null, so a client's bug shows."""


class IdempotencyKeyInUse(
    AppError,
    status=409,
    code="idempotency_key_in_use",
    title="Idempotency-Key in use",
    retry_after=1,
):
    """The first request with this key is still running; retry once it has answered."""


class ImageError(AppError, status=422, code="invalid_image", title="Invalid image"):
    """Raised by the imaging pipeline for input it will not turn into an avatar."""


class UnsupportedFormat(
    ImageError, status=415, code="unsupported_format", title="Unsupported image format"
):
    """The bytes are no image type the service accepts (told by content, not by name)."""


class CorruptImage(ImageError, code="corrupt_image", title="Corrupt image"):
    """The bytes claim an accepted type but its decoder cannot read them, or finds no pixels."""


class TooManyPixels(ImageError, code="too_many_pixels", title="Too many pixels"):
    """Width times height (declared or decoded) over the pixel limit; nothing is decoded
    beyond the header."""


class DimensionsTooLarge(
    ImageError, code="dimensions_too_large", title="Image dimensions too large"
):
    """One side over the dimension limit, however few pixels the image has in all."""


class TooManyFrames(ImageError, code="too_many_frames", title="Too many frames"):
    """An animation with more frames than the frame limit."""


class ImageTooComplex(ImageError, code="image_too_complex", title="Image too complex"):
    """More decoding work than any real picture needs: a JPEG with hundreds of scans, a file of
    countless tiny chunks, or a job still running at the deadline."""


class InvalidCrop(ImageError, code="invalid_crop", title="Invalid crop"):
    """A crop that is not four whole numbers, not positive, or not inside the image."""


class ServerBusy(AppError, status=503, code="server_busy", title="Server busy", retry_after=1):
    """Every image worker is busy and the queue is full: the upload was refused before its body
    was read."""


class ServiceUnavailable(
    AppError, status=503, code="service_unavailable", title="Service unavailable", retry_after=5
):
    """A dependency the service needs is down; the request changed nothing."""


class DatabaseUnavailable(
    ServiceUnavailable, code="database_unavailable", title="Database unavailable"
):
    """The database could not be reached or failed mid-transaction."""


class StorageUnavailable(
    ServiceUnavailable, code="storage_unavailable", title="Storage unavailable"
):
    """The file store could not be reached, or a file the row names is missing."""


class IdentityProviderUnavailable(
    ServiceUnavailable, code="identity_provider_unavailable", title="Identity provider unavailable"
):
    """The identity provider's signing keys (JWKS) could not be fetched to check a token."""


class InsufficientStorage(
    AppError, status=507, code="insufficient_storage", title="Insufficient storage", retry_after=60
):
    """The store has no room (ENOSPC, a quota): nothing was kept; retrying helps once an
    operator has made room."""


class RateLimited(
    AppError, status=429, code="rate_limited", title="Too many requests", retry_after=1
):
    """The client (a user, or an address for anonymous requests) is over its rate limit."""


def all_error_classes() -> list[type[AppError]]:
    """Every concrete error, for documentation and the OpenAPI document."""
    found: list[type[AppError]] = []
    pending: list[type[AppError]] = [AppError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
