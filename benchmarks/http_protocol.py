"""The HTTP/1.1 protocol `serve` ships (httptools with a bounded request head) against
uvicorn's two own: plain httptools, which `serve` used before, and h11 with uvicorn's head size
limit. The same app in a child process each, the same clients.

    python -m benchmarks.http_protocol                  # 4 clients, 5 s, 2 rounds
    python -m benchmarks.http_protocol --clients 8 --seconds 10 --rounds 3

For each protocol it prints requests per second of three kinds of request, each client a thread
with one keep-alive connection: /healthz (the protocol's own cost dominates), a public avatar
document (a database read), and a 449 KB JPEG upload (body handling and the image pool). Then
each one's ratio to plain httptools. The protocols take turns (ABC, CBA, ...) for ``--rounds``
rounds and the best figure of each is kept, so that a machine busy with something else for a
while does not decide the comparison. Requests go to loopback only and stop by themselves.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from collections.abc import Callable

from benchmarks.photo import phone_photo
from benchmarks.server import Server, multipart, spawned_server

PROTOCOLS = {
    "httptools": ["--http", "httptools"],
    "httptools, bounded (shipped)": ["--http", "app.api.protocol:BoundedHttpToolsProtocol"],
    "h11 (size bounded only)": ["--http", "h11", "--h11-max-incomplete-event-size", "16384"],
}


def uvicorn_command(protocol_args: list[str]) -> Callable[[int], list[str]]:
    """The app under uvicorn with the given protocol options (no other server option)."""

    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_served_app",
            "--factory",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            *protocol_args,
        ]

    return command


Request = Callable[[http.client.HTTPConnection], int]


def rate(server: Server, clients: int, seconds: float, request: Request) -> float:
    """Requests per second answered 2xx by ``clients`` keep-alive connections."""
    done = [0] * clients
    failed: list[int] = []
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(*server.host_port, timeout=60)
        while time.monotonic() < stop:
            status = request(connection)
            if 200 <= status < 300:
                done[index] += 1
            else:
                failed.append(status)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        print(f"    ({len(failed)} answers were not 2xx: {sorted(set(failed))})")
    return sum(done) / (time.monotonic() - started)


def get(path: str) -> Request:
    def request(connection: http.client.HTTPConnection) -> int:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status

    return request


def upload(server: Server, body: bytes, content_type: str) -> Request:
    headers = {"Authorization": f"Bearer {server.token('bench')}", "Content-Type": content_type}

    def request(connection: http.client.HTTPConnection) -> int:
        connection.request("POST", "/users/me/avatar", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status

    return request


def measure(
    protocol_args: list[str], args: argparse.Namespace, body: bytes, content_type: str
) -> dict[str, float]:
    with spawned_server(uvicorn_command(protocol_args)) as server:
        post = upload(server, body, content_type)
        post(http.client.HTTPConnection(*server.host_port, timeout=60))  # bench's avatar
        kinds = {
            "GET /healthz": get("/healthz"),
            "GET /users/bench/avatar": get("/users/bench/avatar"),
            "POST /users/me/avatar": post,
        }
        return {
            kind: rate(server, args.clients, args.seconds, request)
            for kind, request in kinds.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    photo = phone_photo(width=1600, height=1200)
    body, content_type = multipart(photo)
    print(f"{args.clients} clients, {args.seconds:g} s each; upload body {len(body):,} bytes")
    results: dict[str, dict[str, float]] = {name: {} for name in PROTOCOLS}
    for round_ in range(args.rounds):
        names = list(PROTOCOLS) if round_ % 2 == 0 else list(reversed(PROTOCOLS))
        for name in names:
            for kind, per_second in measure(PROTOCOLS[name], args, body, content_type).items():
                results[name][kind] = max(per_second, results[name].get(kind, 0.0))
    for name, figures in results.items():
        print(f"  {name} (best of {args.rounds})")
        for kind, per_second in figures.items():
            print(f"    {kind:<26} {per_second:8.1f} requests/s")
    base = results["httptools"]
    for name, figures in results.items():
        if name != "httptools":
            print(f"  {name} / httptools")
            for kind in base:
                print(f"    {kind:<26} {figures[kind] / base[kind]:8.2f}")


if __name__ == "__main__":
    main()
