"""Many clients upload a large photo at the same moment: nothing breaks and nothing is lost.

    python -m benchmarks.stress                            # 100 clients x 10 MB, own server
    python -m benchmarks.stress --clients 12 --size-mb 2   # the reduced run the tests make
    python -m benchmarks.stress --url http://127.0.0.1:8000 --secret "$AVATAR_JWT_SECRET" \\
        [--pid SERVER_PID]

Every client is a thread with its own connection and user; all send their upload at once (a
valid noisy JPEG just under the size, built in memory) and wait for the answer. The rules,
each checked and printed; the exit code is 1 when one is broken:

1. every upload is answered within ``--timeout`` seconds with 2xx, 429 or 503: never another
   status, never a dropped connection, never a hang;
2. every 2xx avatar reads back afterwards: its public document has the version the upload
   returned, and every variant URL serves a WebP of the size the document gives;
3. the server's peak resident memory (VmHWM, read from /proc; needs its pid) stays under
   ``--max-rss-mb``: the pool admits workers + queue uploads and refuses the rest before
   reading them, so memory does not grow with the number of clients;
4. ``/healthz``, probed all along on a connection of its own, always answers 200.

The summary has the counts per status, upload latency percentiles (all, and per status), the
server's peak RSS and the largest sample, /healthz latency, and the read-back results. With
``--retries N`` a client refused with 429/503 waits ``Retry-After`` and tries again, up to N
times, so more uploads get through (and are read back). A server started here runs SQLite and
local storage with ``--workers`` and ``--queue-size``; all traffic stays on loopback (or the
``--url`` given) and every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import math
import random
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from PIL import Image

from benchmarks.server import Sampler, Server, get, memory_mb, multipart, percentile, spawned_server

MIB = 1024 * 1024
ACCEPTABLE = {429, 503}  # besides 2xx
# JPEG quality 95 of RGB noise: about 1.17 bytes a pixel (measured); the side is derived from it.
NOISE_QUALITY = 95
NOISE_BYTES_PER_PIXEL = 1.17


def noisy_jpeg(size: int, *, max_side: int = 4096, seed: int = 20261121) -> bytes:
    """A valid JPEG of random pixels, at most ``size`` bytes and within 1% of it: the pixels
    carry nearly all of it; a JPEG comment pads the rest."""
    rng = random.Random(seed)
    side = min(max_side, int(math.sqrt(size * 0.97 / NOISE_BYTES_PER_PIXEL)))
    while True:
        image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=NOISE_QUALITY)
        data = buffer.getvalue()
        if len(data) <= size:
            break
        side = int(side * math.sqrt(size / len(data)) * 0.98)
    return _pad(data, size)


def _pad(jpeg: bytes, size: int) -> bytes:
    """Insert COM segments after SOI until the file is within 1% under ``size``."""
    missing = size - len(jpeg)
    segments = []
    while missing > 4 + max(size // 100, 64):
        body = min(missing - 4, 65533)
        segments.append(b"\xff\xfe" + struct.pack(">H", body + 2) + b"\0" * body)
        missing -= body + 4
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


@dataclass
class Outcome:
    user_id: str
    status: int | None = None  # None: no answer (a transport error or a hang)
    seconds: float = 0.0
    attempts: int = 0
    document: dict = field(default_factory=dict)
    error: str = ""


def upload(server: Server, user_id: str, body: bytes, content_type: str, timeout: float):
    """(status or None, document, error) of one upload on a fresh connection."""
    host, port = server.host_port
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {
        "Authorization": f"Bearer {server.token(user_id)}",
        "Content-Type": content_type,
    }
    try:
        # The server may answer (e.g. 503) before the whole body is sent: read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("POST", "/users/me/avatar", body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        retry_after = response.getheader("Retry-After")
        document = json.loads(payload) if payload else {}
        return response.status, document, retry_after, ""
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, {}, None, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def fetch(url: str, timeout: float) -> tuple[int, bytes]:
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def read_back(server: Server, outcome: Outcome, timeout: float) -> str | None:
    """None when the avatar reads back whole; else what is wrong."""
    status, body, _ms = get(server, f"/users/{outcome.user_id}/avatar", timeout=timeout)
    if status != 200:
        return f"document: {status}"
    document = json.loads(body)
    if document.get("version") != outcome.document.get("version"):
        return "document: another version"
    for variant in document["variants"]:
        status, data = fetch(variant["url"], timeout)
        if status != 200 or len(data) != variant["bytes"] or data[8:12] != b"WEBP":
            return f"{variant['name']}: {status}, {len(data)} bytes"
    return None


@dataclass
class Report:
    outcomes: list[Outcome]
    seconds: float
    sampler: Sampler
    hwm_mb: float | None
    broken_reads: dict[str, str]
    max_rss_mb: float
    timeout: float

    def rules(self) -> list[tuple[str, bool, str]]:
        statuses = Counter(o.status for o in self.outcomes)
        bad = {
            s: n
            for s, n in statuses.items()
            if s is None or not (200 <= s < 300 or s in ACCEPTABLE)
        }
        ok = [o for o in self.outcomes if o.status is not None and 200 <= o.status < 300]
        memory = self.hwm_mb if self.hwm_mb is not None else None
        return [
            (
                f"every upload answered within {self.timeout:g} s with 2xx, 429 or 503",
                not bad,
                "all" if not bad else f"other answers: {_statuses(bad)}",
            ),
            (
                "every 2xx avatar reads back whole",
                not self.broken_reads,
                f"{len(ok) - len(self.broken_reads)}/{len(ok)}",
            ),
            (
                f"server peak RSS under {self.max_rss_mb:g} MB",
                memory is None or memory < self.max_rss_mb,
                "not measured (no pid)" if memory is None else f"{memory:.0f} MB",
            ),
            (
                "/healthz always answered 200",
                self.sampler.health_failures == 0,
                f"{len(self.sampler.health_ms)} probes, {self.sampler.health_failures} failed",
            ),
        ]

    def print(self, out=sys.stdout) -> bool:
        statuses = Counter(o.status for o in self.outcomes)
        print(f"  {len(self.outcomes)} uploads in {self.seconds:.1f} s", file=out)
        print(f"  answers: {_statuses(statuses)}", file=out)
        _latency_line("all", [o.seconds for o in self.outcomes], out)
        for status in sorted(statuses, key=lambda s: (s is None, s or 0)):
            _latency_line(
                str(status), [o.seconds for o in self.outcomes if o.status == status], out
            )
        retried = sum(o.attempts > 1 for o in self.outcomes)
        if retried:
            print(f"  retried after 429/503: {retried} clients", file=out)
        rss = self.sampler.rss_mb
        if rss:
            print(
                f"  server RSS: peak (VmHWM) {self.hwm_mb:.0f} MB,"
                f" largest sample {max(rss):.0f} MB",
                file=out,
            )
        health = self.sampler.health_ms
        if health:
            print(
                f"  /healthz ms: p50 {percentile(health, 50):.1f} p99 {percentile(health, 99):.1f}"
                f" max {max(health):.1f}",
                file=out,
            )
        for user_id, problem in list(self.broken_reads.items())[:5]:
            print(f"  read-back failed for {user_id}: {problem}", file=out)
        for outcome in [o for o in self.outcomes if o.error][:5]:
            print(f"  transport error for {outcome.user_id}: {outcome.error}", file=out)
        print("Rules:", file=out)
        all_hold = True
        for rule, holds, detail in self.rules():
            all_hold &= holds
            print(f"  [{'PASS' if holds else 'FAIL'}] {rule}: {detail}", file=out)
        return all_hold


def _statuses(counts) -> str:
    return ", ".join(
        f"{'no answer' if s is None else s}: {n}"
        for s, n in sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or 0))
    )


def _latency_line(label: str, seconds: list[float], out) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"  latency ms ({label:>3}, {len(ms):>3}): p50 {percentile(ms, 50):7.0f}"
        f"  p95 {percentile(ms, 95):7.0f}  p99 {percentile(ms, 99):7.0f}  max {max(ms):7.0f}",
        file=out,
    )


def run(
    server: Server,
    *,
    clients: int,
    size: int,
    timeout: float,
    retries: int,
    max_rss_mb: float,
    out=sys.stdout,
) -> bool:
    image = noisy_jpeg(size - 1024)  # just under the limit
    body, content_type = multipart(image)
    width = Image.open(io.BytesIO(image)).size
    print(
        f"Stress: {clients} clients, each one upload of a {width[0]}x{width[1]} noisy JPEG of"
        f" {len(image):,} bytes; server {server.url}",
        file=out,
    )
    outcomes = [Outcome(f"stress-{index:03d}") for index in range(clients)]
    start_line = threading.Barrier(clients + 1)

    def client(outcome: Outcome) -> None:
        start_line.wait()
        started = time.perf_counter()
        for attempt in range(retries + 1):
            outcome.attempts = attempt + 1
            status, document, retry_after, error = upload(
                server, outcome.user_id, body, content_type, timeout
            )
            outcome.status, outcome.document, outcome.error = status, document, error
            if status not in ACCEPTABLE or attempt == retries:
                break
            time.sleep(min(float(retry_after or 1), 10))
        outcome.seconds = time.perf_counter() - started

    threads = [threading.Thread(target=client, args=(o,), daemon=True) for o in outcomes]
    for thread in threads:
        thread.start()
    sampler = Sampler(server)
    sampler.start()
    start_line.wait()
    began = time.perf_counter()
    deadline = began + (retries + 1) * (timeout + 10) + 30
    for thread in threads:
        thread.join(timeout=max(deadline - time.perf_counter(), 0))
    seconds = time.perf_counter() - began
    sampler.stop.set()
    sampler.join()
    for thread, outcome in zip(threads, outcomes, strict=True):
        if thread.is_alive():  # still waiting: a hang (the socket timeout should prevent it)
            outcome.status, outcome.error = None, "no answer before the deadline"
    hwm = memory_mb(server.pid) if server.pid is not None else None

    broken: dict[str, str] = {}
    for outcome in outcomes:
        if outcome.status is not None and 200 <= outcome.status < 300:
            try:
                problem = read_back(server, outcome, timeout)
            except OSError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                broken[outcome.user_id] = problem
    report = Report(outcomes, seconds, sampler, hwm, broken, max_rss_mb, timeout)
    return report.print(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="concurrent uploads (100)")
    parser.add_argument("--size-mb", type=float, default=10, help="upload size in MiB (10)")
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--secret", help="the running server's AVATAR_JWT_SECRET")
    parser.add_argument("--pid", type=int, help="the running server's process id, for its RSS")
    parser.add_argument(
        "--workers", type=int, default=2, help="AVATAR_WORKERS of a server started here"
    )
    parser.add_argument(
        "--queue-size", type=int, default=16, help="AVATAR_QUEUE_SIZE of a server started here"
    )
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds an upload may take (120)"
    )
    parser.add_argument("--retries", type=int, default=0, help="retries after 429/503 (0)")
    parser.add_argument(
        "--max-rss-mb",
        type=float,
        help="bound on the server's peak RSS (default: 350 + 5 x size x (workers + queue))",
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.size_mb <= 0:
        parser.error("--clients and --size-mb must be positive")
    size = int(args.size_mb * MIB)
    # The body the pool admits is held in memory a few times over while it is parsed and
    # decoded; the rest of the clients are refused before their bodies are read.
    bound = args.max_rss_mb or 350 + 5 * args.size_mb * (args.workers + args.queue_size)
    options = {"size": size, "timeout": args.timeout, "retries": args.retries, "max_rss_mb": bound}
    if args.url:
        if not args.secret:
            parser.error("--secret is needed to sign tokens for a running server")
        server = Server(args.url.rstrip("/"), args.pid, args.secret)
        return 0 if run(server, clients=args.clients, **options) else 1
    settings = {
        "workers": str(args.workers),
        "queue_size": str(args.queue_size),
        "max_upload_bytes": str(size),
    }
    with spawned_server(**settings) as server:
        return 0 if run(server, clients=args.clients, **options) else 1


if __name__ == "__main__":
    sys.exit(main())
