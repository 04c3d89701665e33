"""N concurrent clients uploading the 12 MP phone photo to a running server.

    python -m benchmarks.load                         # starts its own server: 1, 4, 8 clients
    python -m benchmarks.load --clients 4 --uploads 10
    python -m benchmarks.load --url http://127.0.0.1:8000 --pid 1234 --secret "$AVATAR_JWT_SECRET"

For each number of clients it prints uploads per second, upload latency p50/p95/p99, the
answers other than 201 (503 = the worker pool was full), the server's resident memory (the
highest sampled during the phase, and its all-time peak VmHWM), and /healthz latency measured
all along from a separate connection. Then the throughput of each phase against one client's.

Each client is a thread with one keep-alive connection sending the same prebuilt body, as
uploads one after another from one browser tab; each uses its own user. The server started
here has AVATAR_WORKERS at its default (the CPU count), SQLite and local storage. Requests go
to loopback only and stop by themselves.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from benchmarks.photo import HEIGHT, WIDTH, phone_photo
from benchmarks.server import (
    Client,
    Sampler,
    Server,
    memory_mb,
    multipart,
    percentile,
    spawned_server,
)


@dataclass
class Phase:
    clients: int
    uploads: int
    seconds: float
    latencies_ms: list[float]
    statuses: Counter
    health_ms: list[float]
    health_failures: int
    rss_max_mb: float | None
    hwm_mb: float | None
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.statuses[201] / self.seconds


def run_phase(server: Server, body: bytes, content_type: str, clients: int, uploads: int) -> Phase:
    """``clients`` threads, each sending ``uploads`` uploads one after another."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client_loop(index: int) -> None:
        client = Client(server, f"load-{clients}-{index}")
        try:
            start_line.wait()
            for _ in range(uploads):
                try:
                    status, _document, ms = client.upload(body, content_type)
                except OSError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    client.close()
                    client = Client(server, f"load-{clients}-{index}")
                    continue
                with lock:
                    statuses[status] += 1
                    if status == 201:
                        latencies.append(ms)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    sampler = Sampler(server, interval=0.02)
    sampler.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    sampler.stop.set()
    sampler.join()
    hwm = memory_mb(server.pid) if server.pid is not None else None
    return Phase(
        clients=clients,
        uploads=clients * uploads,
        seconds=seconds,
        latencies_ms=latencies,
        statuses=statuses,
        health_ms=sampler.health_ms,
        health_failures=sampler.health_failures,
        rss_max_mb=max(sampler.rss_mb) if sampler.rss_mb else None,
        hwm_mb=hwm,
        errors=errors,
    )


def report(phase: Phase, out=sys.stdout) -> None:
    lat, health = phase.latencies_ms, phase.health_ms
    others = {s: n for s, n in phase.statuses.items() if s != 201}

    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} MB"

    print(
        f"  {phase.clients:>2} clients: {phase.statuses[201]:>3} uploads in {phase.seconds:6.2f} s"
        f" = {phase.per_second:5.2f}/s | latency ms p50 {percentile(lat, 50):6.0f}"
        f" p95 {percentile(lat, 95):6.0f} p99 {percentile(lat, 99):6.0f}"
        f" | not 201: {others or 'none'}",
        file=out,
    )
    print(
        f"             server RSS max {mb(phase.rss_max_mb)}, peak (VmHWM) {mb(phase.hwm_mb)}"
        f" | /healthz ms p50 {percentile(health, 50):5.1f} p99 {percentile(health, 99):5.1f}"
        f" max {max(health, default=float('nan')):5.1f} ({len(health)} probes,"
        f" {phase.health_failures} failed)",
        file=out,
    )
    for error in phase.errors[:3]:
        print(f"             error: {error}", file=out)


def run(
    server: Server,
    *,
    clients: list[int],
    uploads: int,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    out=sys.stdout,
) -> list[Phase]:
    data = phone_photo(*size)
    body, content_type = multipart(data)
    print(f"Photo: {size[0]}x{size[1]} JPEG, {len(data):,} bytes; server {server.url}", file=out)
    warm = Client(server, "load-warm-up")
    try:
        warm.upload(body, content_type)
    finally:
        warm.close()
    phases = []
    for count in clients:
        phase = run_phase(server, body, content_type, count, uploads)
        report(phase, out)
        phases.append(phase)
    base = next((p for p in phases if p.clients == 1), None)
    if base and base.per_second:
        print("", file=out)
        for phase in phases:
            if phase.clients != 1:
                print(
                    f"  throughput with {phase.clients} clients / 1 client: "
                    f"{phase.per_second / base.per_second:5.2f}x",
                    file=out,
                )
    return phases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,4,8", help="comma-separated client counts")
    parser.add_argument("--uploads", type=int, default=12, help="uploads per client per phase")
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="the running server's process id, for its RSS")
    parser.add_argument("--secret", help="the running server's AVATAR_JWT_SECRET")
    parser.add_argument("--workers", help="AVATAR_WORKERS for a server started here")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    if args.url:
        if not args.secret:
            parser.error("--secret is needed to sign tokens for a running server")
        run(
            Server(args.url.rstrip("/"), args.pid, args.secret),
            clients=clients,
            uploads=args.uploads,
        )
        return
    settings = {"workers": args.workers} if args.workers else {}
    with spawned_server(**settings) as server:
        run(server, clients=clients, uploads=args.uploads)


if __name__ == "__main__":
    main()
