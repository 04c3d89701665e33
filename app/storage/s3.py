"""S3 storage, for Amazon S3 and S3-compatible stores (MinIO, R2, Ceph).

The boto3 client is built once (``build_s3_client``) and injected. boto3 blocks, so every call
runs on the adapter's own bounded thread pool, never on the event loop; the client carries
connect and read timeouts and a bounded number of attempts, so each call ends in bounded time.

Errors follow the storage contract: a missing key is ``FileNotFoundError``; anything else the
client raises (no answer, timeouts after the last attempt, 5xx, access denied, a missing bucket,
no credentials) becomes ``StoreError`` with a message that says which.

Keys are the service's keys; ``prefix`` puts them under a folder of a shared bucket. URLs are
``public_base_url + "/" + key`` when a CDN or public bucket fronts the prefix, else presigned
GET URLs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from functools import partial
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3Error

from app.core.config import ConfigurationError, Settings
from app.storage.base import StoredObject, StoreError, is_valid_key, no_partial_writes

T = TypeVar("T")

# Keys are never reused (each upload has a fresh version), so caches may keep objects forever.
CACHE_CONTROL = "public, max-age=31536000, immutable"
CONTENT_DISPOSITION = "inline"

_CLIENT_ERRORS = (BotoCoreError, ClientError, Urllib3Error)
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}


def build_s3_client(settings: Settings) -> Any:
    """The one boto3 client of the process. Credentials come from boto3's standard chain."""
    import botocore.session
    from botocore.config import Config

    config = Config(
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        # "standard" retries throttling, 5xx answers and connection errors with backoff;
        # total_max_attempts counts the first try (botocore's max_attempts would not).
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        max_pool_connections=settings.s3_max_connections,
        s3={"addressing_style": settings.s3_addressing_style},
        # SigV4 everywhere, presigned URLs included (some regions and stores accept nothing else).
        signature_version="s3v4",
    )
    session = botocore.session.get_session()
    session.register_component("data_loader", _service_models())
    try:
        return session.create_client(
            "s3",
            region_name=settings.s3_region or None,
            endpoint_url=settings.s3_endpoint_url or None,
            config=config,
        )
    except (BotoCoreError, ValueError) as exc:
        raise ConfigurationError(f"the S3 client cannot be built: {exc}") from None


@functools.cache
def _service_models() -> Any:
    """botocore's loader of service models, one a process: a new session parses the S3 model
    again (0.5-1 s), and every app built in one process (the tests build hundreds) would pay
    that. A client of its own session still finds its credentials anew."""
    from botocore.loaders import create_loader

    return create_loader()


class S3Storage:
    # Objects are fetched from S3 (or the CDN) directly: the service redirects to them.
    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        prefix: str = "",
        public_base_url: str = "",
        presign_ttl: int = 3600,
        max_threads: int = 10,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.public_base_url = public_base_url.rstrip("/")
        self.presign_ttl = presign_ttl
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="s3")

    @classmethod
    def from_settings(cls, settings: Settings, client: Any | None = None) -> S3Storage:
        return cls(
            client if client is not None else build_s3_client(settings),
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            public_base_url=settings.s3_public_base_url,
            presign_ttl=settings.s3_presign_ttl,
            max_threads=settings.s3_max_connections,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.client.close()

    def _object_key(self, key: str) -> str:
        if not is_valid_key(key):
            raise FileNotFoundError(key)
        return self.prefix + key

    async def _run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(func, *args, **kwargs))

    def _unavailable(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f"S3 {action} in bucket {self.bucket!r} failed: {describe(exc)}")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        object_key = self._object_key(key)
        try:
            await self._run(
                self.client.put_object,
                Bucket=self.bucket,
                Key=object_key,
                Body=data,
                ContentType=content_type,
                CacheControl=CACHE_CONTROL,
                ContentDisposition=CONTENT_DISPOSITION,
            )
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(f"put {object_key}", exc) from exc

    async def get(self, key: str) -> bytes:
        object_key = self._object_key(key)
        try:
            return await self._run(self._get, object_key)
        except ClientError as exc:
            if error_code(exc) in _MISSING_KEY_CODES:
                raise FileNotFoundError(key) from None
            raise self._unavailable(f"get {object_key}", exc) from exc
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(f"get {object_key}", exc) from exc

    def _get(self, object_key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=object_key)["Body"]
        try:
            data: bytes = body.read()
            return data
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        try:
            object_key = self._object_key(key)
        except FileNotFoundError:
            return
        try:
            await self._run(self.client.delete_object, Bucket=self.bucket, Key=object_key)
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(f"delete {object_key}", exc) from exc

    async def exists(self, key: str) -> bool:
        try:
            object_key = self._object_key(key)
        except FileNotFoundError:
            return False
        try:
            await self._run(self.client.head_object, Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if error_code(exc) in _MISSING_KEY_CODES:
                return False
            raise self._unavailable(f"head {object_key}", exc) from exc
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(f"head {object_key}", exc) from exc
        return True

    async def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """Objects under ``prefix`` in key order, one page (up to 1,000 keys) per request."""
        token: str | None = None
        while True:
            try:
                page = await self._run(self._list_page, self.prefix + prefix, token)
            except _CLIENT_ERRORS as exc:
                raise self._unavailable(f"list {self.prefix + prefix!r}", exc) from exc
            for item in page.get("Contents", ()):
                key = item["Key"][len(self.prefix) :]
                if is_valid_key(key):
                    modified = item["LastModified"]
                    if modified.tzinfo is None:
                        modified = modified.replace(tzinfo=UTC)
                    yield StoredObject(key, item["Size"], modified.astimezone(UTC))
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def _list_page(self, prefix: str, token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if token:
            params["ContinuationToken"] = token
        page: dict[str, Any] = self.client.list_objects_v2(**params)
        return page

    def list_partial(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        # One PutObject per object: S3 stores all of it or nothing, so a put cut off by a
        # killed process leaves no object behind (no multipart upload is ever started).
        return no_partial_writes()

    async def delete_partial(self, name: str) -> None:
        return None

    def object_url(self, key: str) -> str:
        """Objects are served by S3 or the CDN in front of it."""
        if self.public_base_url:
            return f"{self.public_base_url}/{key}"
        # Signing is local computation; it only touches the network when instance-role
        # credentials are due for a refresh, which boto3 does ahead of expiry.
        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._object_key(key)},
                ExpiresIn=self.presign_ttl,
            )
            return url
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(f"presign {key}", exc) from exc

    async def check(self) -> None:
        try:
            await self._run(self.client.head_bucket, Bucket=self.bucket)
        except _CLIENT_ERRORS as exc:
            raise StoreError(self._explain_check_failure(exc)) from exc

    def _explain_check_failure(self, exc: Exception) -> str:
        bucket = repr(self.bucket)
        code = error_code(exc) if isinstance(exc, ClientError) else ""
        if code in {"404", "NoSuchBucket", "NotFound"}:
            return f"S3 bucket {bucket} does not exist"
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return (
                f"access to S3 bucket {bucket} was denied ({code}): check the credentials "
                "and that they may list the bucket"
            )
        if code in {"301", "PermanentRedirect", "400"}:
            region = _bucket_region(exc)
            if region:
                return f"S3 bucket {bucket} is in region {region}: set AVATAR_S3_REGION={region}"
        return f"S3 bucket {bucket} cannot be used: {describe(exc)}"


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _bucket_region(exc: ClientError) -> str:
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return str(headers.get("x-amz-bucket-region", ""))


def describe(exc: Exception) -> str:
    """One line, no traceback, no secrets."""
    if isinstance(exc, NoCredentialsError):
        return "no credentials found (environment, shared profile or instance role)"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot connect to the endpoint {exc.kwargs.get('endpoint_url', '')}".rstrip()
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return f"the endpoint did not answer in time ({type(exc).__name__})"
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        message = exc.response.get("Error", {}).get("Message", "")
        return f"{error_code(exc) or 'error'} (HTTP {status})" + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {exc}"
