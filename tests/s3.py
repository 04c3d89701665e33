"""A real S3 endpoint for the tests: moto's server on a free loopback port, spoken to over HTTP.

One server is started per test session, on first use, and stopped at the end (see the
``_moto_s3_lifetime`` fixture in conftest). Each caller gets a bucket of its own, so tests never
see each other's objects.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings

REGION = "us-east-1"
# Requests to the service's own /media route: objects are fetched through the app, which is
# what `tests/api` expects of every store. Presigned URLs are tested in tests/storage.
SERVICE_MEDIA_BASE = "http://testserver/media"

# Fixed, fake credentials for boto3's standard chain; no profile file or instance metadata is
# consulted, so a developer's real credentials can never be picked up by the tests.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


class MotoS3:
    """moto's ThreadedMotoServer on 127.0.0.1 and an OS-chosen port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        os.environ.update(FAKE_CREDENTIALS)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self._client: Any = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._server.stop()

    @property
    def client(self) -> Any:
        """The tests' own boto3 client, for looking behind the adapter's back."""
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.session.Session().client(
                    "s3", region_name=REGION, endpoint_url=self.endpoint_url
                )
            return self._client

    def create_bucket(self) -> str:
        name = f"avatar-test-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Settings values for an S3 store on this server (a new bucket unless one is given)."""
        values: dict[str, Any] = {
            "storage": "s3",
            "s3_bucket": bucket or self.create_bucket(),
            "s3_region": REGION,
            "s3_endpoint_url": self.endpoint_url,
            "s3_connect_timeout": 2.0,
            "s3_read_timeout": 5.0,
            "s3_max_attempts": 2,
        }
        values.update(overrides)
        return values

    @contextmanager
    def authentication_enforced(self):
        """Make the server check signatures and access keys (moto accepts anything otherwise)."""
        import httpx

        httpx.post(f"{self.endpoint_url}/moto-api/reset-auth", content=b"0").raise_for_status()
        try:
            yield
        finally:
            httpx.post(f"{self.endpoint_url}/moto-api/reset-auth", content=b"inf")


_server: MotoS3 | None = None
_server_lock = threading.Lock()


def moto_s3() -> MotoS3:
    """The session's moto server, started on first use."""
    global _server
    with _server_lock:
        if _server is None:
            _server = MotoS3()
        return _server


def stop_moto_s3() -> None:
    global _server
    with _server_lock:
        if _server is not None:
            _server.stop()
            _server = None


def moto_available() -> bool:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True, order=True)
class StoredS3Object:
    """What ``tests.conftest.stored_files`` gives for an S3 store: sortable, hashable and
    readable like the ``Path`` it gives for a local one."""

    bucket: str
    key: str

    def read_bytes(self) -> bytes:
        body = moto_s3().client.get_object(Bucket=self.bucket, Key=self.key)["Body"]
        try:
            return body.read()
        finally:
            body.close()


def stored_objects(settings: Settings) -> list[StoredS3Object]:
    """Every object in the settings' bucket (the whole bucket, not only the prefix, so a key
    written outside the prefix would show up too)."""
    client = moto_s3().client
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket):
        found.extend(
            StoredS3Object(settings.s3_bucket, item["Key"]) for item in page.get("Contents", ())
        )
    return sorted(found)


def closed_port() -> int:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def silent_endpoint():
    """A loopback endpoint that accepts connections and never answers: reads time out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()
