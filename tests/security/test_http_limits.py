"""The request head (request line and headers) is bounded in size and in time by the server
`avatar-service serve` runs, and what it refuses is answered in problem+json.

A real server process, raw sockets: these limits live below the application, where an ASGI
test client never reaches."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.live import LiveServer, live_server, read_response

# Every test here runs the service as a child process.
pytestmark = pytest.mark.server

HEADER_TIMEOUT = 1.5
MAX_HEADER_BYTES = 16384


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(
        tmp_path_factory.mktemp("http-limits"),
        AVATAR_JWT_SECRET="http-limits-secret-" + "s" * 40,
        AVATAR_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        AVATAR_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    ) as live:
        yield live


def connect(server: LiveServer) -> socket.socket:
    url = urlsplit(server.base_url)
    return socket.create_connection((url.hostname, url.port), timeout=30)


def assert_raw_problem(response: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got, headers, body = response
    assert got == status, body
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (status, code)


def healthz_ms(server: LiveServer) -> float:
    started = time.perf_counter()
    assert httpx.get(f"{server.base_url}/healthz", timeout=10).status_code == 200
    return (time.perf_counter() - started) * 1000


def test_an_endless_header_line_is_cut_off_at_the_limit_with_431(server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ")
        sent = 0
        try:
            while sent < 100 * 1024 * 1024:  # the server must stop this long before 100 MB
                sock.sendall(b"a" * 65536)
                sent += 65536
                if sent % (1024 * 1024) == 0:
                    assert healthz_ms(server) < 500  # the others are served meanwhile
        except OSError:  # the server answered and closed: our writes fail
            pass
        assert sent < 4 * 1024 * 1024, f"{sent} bytes of one header were accepted"
        assert_raw_problem(read_response(sock), 431, "headers_too_large")


@pytest.mark.parametrize(("extra", "status"), [(-300, 200), (1, 431), (40_000, 431)])
def test_a_whole_head_in_one_write_is_held_to_the_limit(server, extra: int, status: int) -> None:
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: "
    filler = b"f" * (MAX_HEADER_BYTES - len(start) - 4 + extra)
    with connect(server) as sock:
        sock.sendall(start + filler + b"\r\n\r\n")
        response = read_response(sock)
    assert response[0] == status, response
    if status == 431:
        assert_raw_problem(response, 431, "headers_too_large")


def test_a_huge_bearer_token_never_reaches_the_application(server) -> None:
    token = "e" * (8 * 1024 * 1024)
    response = httpx.get(
        f"{server.base_url}/users/me/avatar",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 431
    assert response.json()["code"] == "headers_too_large"


def test_headers_trickled_a_line_at_a_time_are_cut_off_with_408(server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for index in range(100):  # a line every 0.3 s: never idle, never done
            time.sleep(0.3)
            try:
                sock.sendall(f"X-Line-{index}: y\r\n".encode())
            except OSError:
                break
        response = read_response(sock)
        elapsed = time.monotonic() - started
    assert_raw_problem(response, 408, "request_timeout")
    assert HEADER_TIMEOUT - 0.2 < elapsed < HEADER_TIMEOUT + 1.5, elapsed


def test_the_head_deadline_also_holds_on_a_kept_alive_connection(server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request's head never ends
        for _ in range(20):
            time.sleep(0.2)
            try:
                sock.sendall(b"X: y\r\n")
            except OSError:
                break
        response = read_response(sock)
        assert_raw_problem(response, 408, "request_timeout")
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_a_connection_that_sends_nothing_is_closed(server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed without an answer: there was no request
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Name: y\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # no Host
    ],
)
def test_malformed_requests_get_problem_json(server, request_bytes: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(request_bytes)
        assert_raw_problem(read_response(sock), 400, "invalid_http_request")


def test_requests_within_the_limits_are_served(server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for _ in range(3):  # keep-alive: the deadline is re-armed for each request
            response = client.get("/healthz", headers={"X-Big": "v" * (MAX_HEADER_BYTES // 2)})
            assert response.status_code == 200
            time.sleep(HEADER_TIMEOUT / 2)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_body_refused_before_it_is_read_is_not_read_afterwards(server, method: str) -> None:
    """The 401 comes before the body; then the connection is closed, instead of the server
    receiving (and throwing away) the 300 MB it was promised, to keep the connection."""
    with connect(server) as sock:
        sock.sendall(
            f"{method} /users/me/avatar HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 300000000\r\n\r\n".encode()
        )
        status, headers, _body = read_response(sock)
        assert status == 401
        assert headers["connection"] == "close"
        sock.settimeout(5)
        assert sock.recv(1) == b"", "the server still waits for the body"


def test_a_client_that_sends_its_whole_body_first_still_reads_the_refusal(server) -> None:
    """Within the upload limit, the rest of a refused body is received and thrown away before
    the answer (a lingering close), so a client that writes everything before it reads gets
    the 401 instead of a reset connection, and may keep the connection."""
    body = b"\0" * (4 * 1024 * 1024)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(3):
            response = client.post(
                "/users/me/avatar",
                content=body,
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            )
            assert response.status_code == 401
            assert response.headers.get("connection") != "close"
        assert client.get("/healthz").status_code == 200


def test_the_limits_hold_in_every_server_process(tmp_path) -> None:
    """With AVATAR_PROCESSES > 1 uvicorn starts the protocol by name in each process."""
    with live_server(
        tmp_path, AVATAR_PROCESSES="2", AVATAR_HEADER_TIMEOUT="1", AVATAR_MAX_HEADER_BYTES="2048"
    ) as multi:
        for _ in range(4):  # connections land on either process
            response = httpx.get(f"{multi.base_url}/healthz", headers={"X-Big": "v" * 4096})
            assert response.status_code == 431
            assert response.json()["code"] == "headers_too_large"
        with connect(multi) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert_raw_problem(read_response(sock), 408, "request_timeout")
