"""What one replica costs: server CPU-seconds per upload (a 12 MP photo, a phone selfie, a
screenshot) and per read (the avatar document, the image), for the README's "Capacity".

    python -m benchmarks.capacity                 # SQLite, or --postgres-url for PostgreSQL
    python -m benchmarks.capacity --uploads 4 --reads 200

The figure is the server process's own CPU time (user + system, every thread, from /proc),
divided by the requests it answered: it does not depend on what else runs on the machine,
which the throughput measured alongside does (the clients share the cores with the server).
Uploads go one at a time (so each is measured alone); reads come from 4 keep-alive clients.
Everything goes to a server started here, on loopback; every loop is bounded.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from benchmarks.photo import phone_photo
from benchmarks.server import (
    Client,
    Server,
    add_postgres_option,
    get,
    multipart,
    percentile,
    scratch_postgres,
    spawned_server,
)

TICKS = os.sysconf("SC_CLK_TCK")
READ_CLIENTS = 4


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def screenshot(width: int = 1170, height: int = 2532, *, seed: int = 3) -> bytes:
    """A phone screenshot as PNG: flat colours, bars, cards and lines of text."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (246, 246, 248))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 140), fill=(28, 110, 220))
    y = 180
    while y < height - 200:
        card = rng.randrange(160, 420)
        draw.rounded_rectangle((40, y, width - 40, y + card), 24, fill=(255, 255, 255))
        draw.ellipse((70, y + 30, 170, y + 130), fill=tuple(rng.randrange(256) for _ in range(3)))
        for line in range(y + 40, y + card - 30, 34):
            words = " ".join(
                rng.choice(["avatar", "upload", "replica", "crop", "cache"])
                for _ in range(rng.randrange(3, 9))
            )
            draw.text((200, line), words, fill=(40, 40, 40))
        y += card + 30
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


INPUTS = {
    "12 MP photo (4032x3024 JPEG)": lambda: phone_photo(),
    "phone selfie (2316x3088 JPEG)": lambda: phone_photo(3088, 2316, seed=7, quality=88),
    "screenshot (1170x2532 PNG)": lambda: screenshot(),
}


@dataclass
class Figure:
    what: str
    requests: int
    cpu_ms: float  # server CPU per request
    wall_ms_p50: float
    per_second: float  # measured, clients on the same machine
    bytes_in: int = 0

    @property
    def per_core(self) -> float:
        return 1000 / self.cpu_ms


def measure_uploads(server: Server, user: str, name: str, data: bytes, count: int) -> Figure:
    body, content_type = multipart(data, "upload.png" if data[:4] == b"\x89PNG" else "a.jpg")
    client = Client(server, user)
    try:
        for _ in range(2):  # warm: imports, codecs, first connections
            status, _doc, _ms = client.upload(body, content_type)
            assert status == 201, status
        assert server.pid is not None
        before, started = cpu_seconds(server.pid), time.perf_counter()
        times = []
        for _ in range(count):
            status, _doc, ms = client.upload(body, content_type)
            assert status == 201, status
            times.append(ms)
        elapsed = time.perf_counter() - started
        used = cpu_seconds(server.pid) - before
    finally:
        client.close()
    return Figure(
        name, count, used / count * 1000, percentile(times, 50), count / elapsed, len(data)
    )


def measure_reads(server: Server, what: str, path: str, count: int) -> Figure:
    import http.client

    assert server.pid is not None
    per_client = max(1, count // READ_CLIENTS)
    times: list[float] = []
    failures: list[int] = []

    def loop() -> None:
        connection = http.client.HTTPConnection(*server.host_port, timeout=30)
        try:
            for _ in range(per_client):
                start = time.perf_counter()
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                times.append((time.perf_counter() - start) * 1000)
                if response.status != 200:
                    failures.append(response.status)
        finally:
            connection.close()

    get(server, path)  # warm
    before, started = cpu_seconds(server.pid), time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(READ_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    used = cpu_seconds(server.pid) - before
    assert not failures, failures[:5]
    done = per_client * READ_CLIENTS
    return Figure(what, done, used / done * 1000, percentile(times, 50), done / elapsed)


def run(*, uploads: int, reads: int, database_url: str | None, out=sys.stdout) -> list[Figure]:
    settings = {"workers": "2", "log_level": "WARNING"}
    if database_url:
        settings["database_url"] = database_url
    figures = []
    with spawned_server(**settings) as server:
        for name, make in INPUTS.items():
            figures.append(measure_uploads(server, "capacity", name, make(), uploads))
        for what, path in (
            ("document GET /users/{id}/avatar", "/users/capacity/avatar"),
            ("image GET /avatars/{id}?size=128", "/avatars/capacity?size=128"),
        ):
            figures.append(measure_reads(server, what, path, reads))
    report(figures, database="PostgreSQL" if database_url else "SQLite", out=out)
    return figures


def report(figures: list[Figure], *, database: str, out=sys.stdout) -> None:
    print(
        f"one replica: AVATAR_WORKERS=2, local storage, {database}; server CPU per request",
        file=out,
    )
    print(
        "| request | input bytes | server CPU ms | per core /s | p50 ms | measured /s |", file=out
    )
    print("|---|---|---|---|---|---|", file=out)
    for f in figures:
        size = f"{f.bytes_in:,}" if f.bytes_in else "—"
        print(
            f"| {f.what} | {size} | {f.cpu_ms:.1f} | {f.per_core:,.1f} | {f.wall_ms_p50:.1f} "
            f"| {f.per_second:,.1f} |",
            file=out,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__)
    parser.add_argument("--uploads", type=int, default=8, help="measured uploads per input")
    parser.add_argument("--reads", type=int, default=2000, help="measured reads per kind")
    add_postgres_option(parser)
    args = parser.parse_args(argv)
    with scratch_postgres(args.postgres_url, "avatar_capacity") as url:
        run(uploads=args.uploads, reads=args.reads, database_url=url)


if __name__ == "__main__":
    main()
