"""Upload latency with a webhook receiver that never answers, against no webhooks at all.

    python -m benchmarks.webhooks                  # 100 uploads per server
    python -m benchmarks.webhooks --uploads 20 --size 800

Three servers are started (SQLite, local storage, default settings otherwise): one without
webhooks, one whose webhook endpoint and CDN purge both point at a loopback "black hole" that
accepts connections and never answers (every delivery runs into its timeout and is retried),
and a second one without webhooks, the noise reference. Uploads go to each in turn, each upload
a new user so that each writes an event, after a few warm-up uploads. Printed: the median and
p95 of each and their medians against the first one's; the difference between the two servers
without webhooks is the noise of the machine, measured in the same run.

Requests go to loopback only and stop by themselves.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import threading

from benchmarks.photo import phone_photo
from benchmarks.server import Client, multipart, percentile, spawned_server


class BlackHole(threading.Thread):
    """A TCP server on loopback that accepts, reads and never answers."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0

    def run(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            connection.setblocking(False)
            self.held.append(connection)  # kept open, never written to
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


def run(uploads: int, size: int, warmup: int) -> tuple[dict[str, list[float]], int]:
    hole = BlackHole()
    hole.start()
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    sink = f"http://127.0.0.1:{hole.port}"
    with_events = {
        "public_base_url": "https://avatars.example.com",
        "webhooks": json.dumps([{"name": "never", "url": f"{sink}/hook", "secret": secret}]),
        "cdn_purge": json.dumps({"method": "PURGE", "url": sink + "/purge?u={url_quoted}"}),
    }
    body, content_type = multipart(phone_photo(size, size * 3 // 4))
    latencies: dict[str, list[float]] = {name: [] for name in NAMES}
    try:
        with (
            spawned_server() as plain,
            spawned_server(**with_events) as hooked,
            spawned_server() as plain_again,
        ):
            servers = dict(zip(NAMES, (plain, hooked, plain_again), strict=True))
            for server in servers.values():
                client = Client(server, "warmup")
                for _ in range(warmup):
                    client.upload(body, content_type)
                client.close()
            # One upload to each server in turn, so that all three meet the same machine.
            for n in range(uploads):
                for name, server in servers.items():
                    client = Client(server, f"user-{n}")
                    status, _document, ms = client.upload(body, content_type)
                    client.close()
                    assert status == 201, status
                    latencies[name].append(ms)
    finally:
        hole.close()
    return latencies, hole.accepted


NAMES = ("none", "never answers", "none, again")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=100, help="uploads per server")
    parser.add_argument("--size", type=int, default=1024, help="photo width in px (4:3)")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    latencies, held = run(args.uploads, args.size, args.warmup)
    print(
        f"{args.uploads} uploads per server, taking turns, {args.size}x{args.size * 3 // 4} "
        "JPEG, one new user per upload"
    )
    print("| webhooks | p50 ms | p95 ms | p50 vs none |")
    print("|---|---|---|---|")
    base = statistics.median(latencies["none"])
    for name in NAMES:
        times = latencies[name]
        p50 = statistics.median(times)
        print(f"| {name} | {p50:.1f} | {percentile(times, 95):.1f} | {p50 / base:.3f} |")
    webhooks = statistics.median(latencies["never answers"]) / base - 1
    noise = statistics.median(latencies["none, again"]) / base - 1
    print(
        f"never answers vs none: {webhooks:+.1%}; the same settings twice (the noise): "
        f"{noise:+.1%}; the black hole held {held} connections"
    )


if __name__ == "__main__":
    main()
