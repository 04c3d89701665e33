"""Slow and broken clients against a real server (uvicorn in a child process, real sockets).

- A body trickled a byte at a time, and one that stalls, are cut off with 408 by the body
  timeouts while other clients upload and read normally in the meantime.
- Clients that disconnect half-way through the body (a clean close and a reset) leave no file
  and no row, and give back their place in the image pool: more of them than the pool has
  places, then a normal upload still succeeds.

tests/api/test_avatars.py::test_a_trickled_body_is_cut_off_with_408 covers the same timeouts
at the ASGI level; here the server's own HTTP stack is in the loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.core.config import load_settings
from app.core.security import create_token
from tests.images import jpeg_with_metadata
from tests.live import LiveServer, live_server, read_response
from tests.services.support import table_snapshot

pytestmark = pytest.mark.server

SECRET = "slow-clients-secret-" + "s" * 40
IDLE_TIMEOUT = 1.0
TOTAL_TIMEOUT = 3.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(
        tmp_path,
        AVATAR_JWT_SECRET=SECRET,
        AVATAR_BODY_IDLE_TIMEOUT=str(IDLE_TIMEOUT),
        AVATAR_BODY_TIMEOUT=str(TOTAL_TIMEOUT),
        AVATAR_WORKERS="2",
        AVATAR_QUEUE_SIZE="4",
    ) as live:
        yield live


def token(user_id: str) -> str:
    settings = load_settings(_env_file=None, jwt_secret=SECRET, data_dir=Path("."))
    return create_token(settings, user_id)


def multipart(data: bytes) -> tuple[bytes, bytes, str]:
    """(part head, the rest of the body, content type) of a one-file form."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, data + tail, f"multipart/form-data; boundary={boundary}"


def open_upload(server: LiveServer, user_id: str, content_type: str, length: int) -> socket.socket:
    """A raw connection that has sent an upload's request line and headers, no body yet."""
    host, port = urlsplit(server.base_url).hostname, urlsplit(server.base_url).port
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(
        (
            f"POST /users/me/avatar HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token(user_id)}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
    )
    return sock


def trickle(sock: socket.socket, head: bytes, rest: bytes, interval: float) -> tuple[int, float]:
    """Send ``head`` then one byte of ``rest`` every ``interval`` s until the server answers;
    return (bytes of ``rest`` sent, seconds until the answer)."""
    started = time.monotonic()
    sock.sendall(head)
    sent = 0
    while sent < len(rest):
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            break
        try:
            sock.sendall(rest[sent : sent + 1])
        except OSError:
            break
        sent += 1
    select.select([sock], [], [], 30)
    return sent, time.monotonic() - started


def media_files(server: LiveServer) -> list[Path]:
    root = server.cwd / "data" / "media"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def rows(server: LiveServer) -> list:
    url = f"sqlite+aiosqlite:///{server.cwd / 'data' / 'avatar.db'}"
    return asyncio.run(table_snapshot(url))


def in_flight(server: LiveServer) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    match = re.search(r"^avatar_uploads_in_flight (\S+)$", text, re.M)
    assert match, "no in-flight gauge"
    return float(match.group(1))


def wait_until_idle(server: LiveServer, timeout: float = 10) -> None:
    """Until the server holds no upload (the /metrics request itself is not one)."""
    deadline = time.monotonic() + timeout
    while in_flight(server) != 0:
        assert time.monotonic() < deadline, "an upload is still held by the server"
        time.sleep(0.05)


def assert_408(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 408, body
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["code"] == "request_timeout"


def test_trickled_and_stalled_bodies_are_cut_off_while_others_are_served(server) -> None:
    image = jpeg_with_metadata((320, 240))
    head, rest, content_type = multipart(image)
    outcomes: dict[str, object] = {}

    def trickler() -> None:  # never idle for long, always too slow: the total timeout
        sock = open_upload(server, "trickler", content_type, len(head) + len(rest))
        with sock:
            sent, seconds = trickle(sock, head, rest, interval=0.1)
            outcomes["trickler"] = (*read_response(sock), sent, seconds)

    def staller() -> None:  # sends the part head, then nothing: the idle timeout
        sock = open_upload(server, "staller", content_type, len(head) + len(rest))
        with sock:
            started = time.monotonic()
            sock.sendall(head)
            select.select([sock], [], [], 30)
            outcomes["staller"] = (*read_response(sock), time.monotonic() - started)

    def upload(client: httpx.Client) -> None:
        response = client.post(
            "/users/me/avatar",
            headers={"Authorization": f"Bearer {token('good')}"},
            files={"file": ("a.jpg", image, "image/jpeg")},
        )
        assert response.status_code == 201, response.text

    served = []
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        upload(client)  # the first image job starts its worker process: not what is timed here
        bad = [threading.Thread(target=trickler), threading.Thread(target=staller)]
        for thread in bad:
            thread.start()
        time.sleep(0.3)  # both are connected and sending slowly

        # Meanwhile, others are served at once: uploads, reads, health checks.
        while bad[0].is_alive() and len(served) < 6:
            started = time.monotonic()
            upload(client)
            assert client.get("/users/good/avatar").status_code == 200
            assert client.get("/healthz").status_code == 200
            served.append(time.monotonic() - started)
    for thread in bad:
        thread.join(timeout=30)
    assert len(served) >= 3, "the other clients were not served while the slow ones waited"
    assert max(served) < TOTAL_TIMEOUT / 2, served

    status, headers, body, sent, seconds = outcomes["trickler"]  # type: ignore[misc]
    assert_408(status, headers, body)
    assert TOTAL_TIMEOUT - 0.5 < seconds < TOTAL_TIMEOUT + 3, seconds
    assert sent < len(rest), "the whole body got through"
    status, headers, body, seconds = outcomes["staller"]  # type: ignore[misc]
    assert_408(status, headers, body)
    assert IDLE_TIMEOUT - 0.5 < seconds < IDLE_TIMEOUT + 3, seconds

    wait_until_idle(server)
    assert [row[0] for row in rows(server)] == ["good"]
    assert len(media_files(server)) == len(client_document(server, "good")["variants"])


def client_document(server: LiveServer, user_id: str) -> dict:
    return httpx.get(f"{server.base_url}/users/{user_id}/avatar", timeout=5).json()


def disconnect_half_way(server: LiveServer, user_id: str, *, reset: bool) -> None:
    image = jpeg_with_metadata((640, 480))
    head, rest, content_type = multipart(image)
    body = head + rest
    sock = open_upload(server, user_id, content_type, len(body))
    sock.sendall(body[: len(body) // 2])
    time.sleep(0.05)  # the server is reading the body
    if reset:  # RST instead of FIN, as a crashed client or a dropped mobile link looks
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_disconnect_mid_upload_leave_no_file_no_row_and_no_held_place(
    server,
) -> None:
    # More disconnects than the pool has places (2 workers + 4 queued): a leaked place would
    # make the last ones, and the upload after them, a 503.
    for index in range(8):
        disconnect_half_way(server, f"gone-{index}", reset=bool(index % 2))
    wait_until_idle(server)
    assert media_files(server) == []
    assert rows(server) == []

    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        response = client.post(
            "/users/me/avatar",
            headers={"Authorization": f"Bearer {token('gone-0')}"},
            files={"file": ("a.jpg", jpeg_with_metadata((320, 240)), "image/jpeg")},
        )
        assert response.status_code == 201, response.text
    log = server.log_path.read_text()
    assert log.count('"error_code":"client_disconnected"') == 8, log[-3000:]
    assert "Traceback" not in log
