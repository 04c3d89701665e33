"""Reads against their references, in one run: the service, a minimal app on the same data, and
nginx on the same files.

    python -m benchmarks.reads                      # SQLite and PostgreSQL, 1,000 users, wrk
    python -m benchmarks.reads --users 200 --seconds 5 --no-postgres
    python -m benchmarks.reads --loader python      # without wrk: a slower load generator
    python -m benchmarks.reads --processes 2        # the service and the minimal app, 2 each

For each database (SQLite in a fresh folder; a fresh database on the PostgreSQL server of
``--postgres-url``) it starts three servers on loopback:

- the service: ``avatar-service serve`` with its defaults (log level INFO, the access log on,
  one server process, or ``--processes``), local storage, ``--users`` users' avatars uploaded
  to it through its API first;
- the minimal app: Starlette under the same server (uvicorn with uvloop and httptools, as many
  processes), one route per read, SQLAlchemy Core on the same driver with an autocommit
  connection (one round trip a read), the document built by the service's own presenter, so
  its JSON bytes are the service's (checked before loading);
- nginx: ``deploy/nginx/avatar.conf`` (the production answer for /media) on the media folder.

Then each read is loaded for ``--seconds`` (after a second of warm-up), in ``--rounds``
rounds (the second in the other order; the best counts), with ``--connections``
keep-alive connections spread over every user's URL in turn: the document
``GET /users/{id}/avatar`` (service, minimal app), ``GET /avatars/{id}?size=64`` (service,
minimal app; nginx serving the same file from /media), and ``GET /media/{key}`` of the 400 px
square (service, nginx). It prints requests/s, p50 and p99 latency, errors, the server's CPU
per request (of all its processes), and the service's ratio to each reference. Only loopback
addresses are loaded, each for a bounded time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.nginx import nginx_binary, running_nginx
from benchmarks.photo import phone_photo
from benchmarks.server import (
    ROOT,
    Server,
    _free_port,
    _wait_ready,
    percentile,
    spawned_server,
    stop,
    upload_avatars,
)

# The address documents carry: the service's AVATAR_PUBLIC_BASE_URL and the minimal app's base,
# so both write the same bytes whatever port they listen on.
PUBLIC_BASE_URL = "http://avatars.example"
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
SQUARE = 64  # GET /avatars/{id}?size=64
MEDIA_VARIANT = "thumb"  # GET /media/{key}: the 400 px square lists download


@dataclass
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # transport errors, timeouts and answers other than 200
    cpu_us: float | None = None  # the server's CPU time per request, where known

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# --- load generators -------------------------------------------------------------------------

WRK_SCRIPT = """
paths = {%s}
i = math.random(#paths)
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_load(base: str, paths: list[str], *, seconds: float, connections: int) -> Load:
    """wrk, 2 threads; latencies in microseconds from its histogram."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % ", ".join(json.dumps(path) for path in paths))
    try:
        ran = subprocess.run(
            [
                wrk_binary() or "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                base,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
    line = next((ln for ln in ran.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{ran.stdout}\n{ran.stderr}")
    requests, duration_us, p50_us, p99_us, errors = (int(v) for v in line.split()[1:])
    return Load(requests, duration_us / 1e6, p50_us / 1000, p99_us / 1000, errors)


def python_load(base: str, paths: list[str], *, seconds: float, connections: int) -> Load:
    """The same load from asyncio in this process: keep-alive HTTP/1.1 GETs, each connection
    taking the next path in turn. It spends more CPU a request than wrk, so on a small machine
    it slows the servers down more; use it only without wrk."""
    host, port = base.removeprefix("http://").split(":")
    return asyncio.run(_python_load(host, int(port), paths, seconds, connections))


async def _python_load(
    host: str, port: int, paths: list[str], seconds: float, connections: int
) -> Load:
    latencies: list[float] = []
    errors = 0
    turn = iter(range(1 << 62))
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                path = paths[next(turn) % len(paths)]
                start = time.perf_counter()
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - start) * 1000)
                errors += head[9:12] != b"200"
                if b"\r\nconnection: close" in head.lower():
                    # The server ends a kept-alive connection now and then (nginx after
                    # keepalive_requests answers): a client opens another, as wrk does.
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return Load(
        len(latencies), elapsed, percentile(latencies, 50), percentile(latencies, 99), errors
    )


LOADERS: dict[str, Callable[..., Load]] = {"wrk": wrk_load, "python": python_load}


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of a process and of its live children (the server
    processes ``--processes`` starts, and the image workers, idle while reads run)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(child) for child in task.read_text().split()]
    return own + sum(cpu_seconds(child) for child in children)


def measure(
    loader: Callable[..., Load],
    base: str,
    paths: list[str],
    *,
    seconds: float,
    connections: int,
    pid: int | None,
) -> Load:
    loader(base, paths, seconds=min(1.0, seconds), connections=connections)  # warm-up
    before = cpu_seconds(pid) if pid else 0.0
    result = loader(base, paths, seconds=seconds, connections=connections)
    if pid and result.requests:
        result.cpu_us = (cpu_seconds(pid) - before) / result.requests * 1e6
    return result


# --- the minimal app ---------------------------------------------------------------------------


def minimal_app(database_url: str, media_root: Path) -> Any:
    """Starlette with one route per read: a Core SELECT of the row on an autocommit connection,
    the document from the service's presenter, the file read in the event loop."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from app.api.presenter import build_document
    from app.db.models import Avatar
    from app.storage.local import LocalStorage

    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    storage = LocalStorage(media_root)
    table = Avatar.__table__
    not_found = Response(b'{"code":"avatar_not_found"}', 404, media_type="application/json")

    async def row(user_id: str) -> Avatar | None:
        async with engine.connect() as connection:
            found = (
                await connection.execute(select(table).where(table.c.user_id == user_id))
            ).first()
        return None if found is None else Avatar(**found._mapping)

    async def document(request: Request) -> Response:
        avatar = await row(request.path_params["user_id"])
        if avatar is None:
            return not_found
        body = build_document(avatar, storage=storage, base_url=PUBLIC_BASE_URL).model_dump_json()
        return Response(body.encode(), media_type="application/json")

    async def image(request: Request) -> Response:
        avatar = await row(request.path_params["user_id"])
        if avatar is None:
            return not_found
        square = avatar.variants.square_for(int(request.query_params.get("size", "80")))
        data = (media_root / square.key).read_bytes()
        return Response(data, media_type=square.content_type)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    async def health(_request: Request) -> Response:
        return Response(b"ok")

    return Starlette(
        routes=[
            Route("/users/{user_id}/avatar", document),
            Route("/avatars/{user_id}", image),
            Route("/healthz", health),
        ],
        lifespan=lifespan,
    )


@contextmanager
def spawned_minimal(database_url: str, media_root: Path, processes: int = 1) -> Iterator[Server]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.reads", "--serve-minimal", str(port)],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            MINIMAL_DATABASE: database_url,
            MINIMAL_MEDIA: str(media_root),
            MINIMAL_PROCESSES: str(processes),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(f"http://127.0.0.1:{port}", process.pid, "")
    try:
        _wait_ready(server, process)
        yield server
    finally:
        stop(process)


# What the minimal app's processes read their data from (each builds its own app).
MINIMAL_DATABASE = "READS_MINIMAL_DATABASE_URL"
MINIMAL_MEDIA = "READS_MINIMAL_MEDIA_ROOT"
MINIMAL_PROCESSES = "READS_MINIMAL_PROCESSES"


def minimal_from_environment() -> Any:
    return minimal_app(os.environ[MINIMAL_DATABASE], Path(os.environ[MINIMAL_MEDIA]))


def serve_minimal(port: int) -> None:
    """The minimal app under the service's server: uvicorn on uvloop and httptools, in as many
    processes as the service, one process on the service's event loop (batched accepts)."""
    import uvicorn

    from app.cli.server import event_loop

    processes = int(os.environ.get(MINIMAL_PROCESSES, "1"))
    uvicorn.run(
        "benchmarks.reads:minimal_from_environment",
        factory=True,
        workers=processes if processes > 1 else None,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop=event_loop(processes),
        access_log=False,
        log_level="warning",
    )


# --- the run -----------------------------------------------------------------------------------


def seed(server: Server, users: int, photo: bytes, *, clients: int = 4) -> list[str]:
    """``users`` avatars uploaded through the API, ``clients`` at a time."""
    user_ids = [f"reader-{number:05d}" for number in range(users)]
    upload_avatars(server, user_ids, photo, clients=clients)
    return user_ids


def fetch(base: str, path: str) -> tuple[int, bytes]:
    import http.client

    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Row:
    read: str
    server: str
    load: Load


def run_database(
    label: str,
    database_url: str | None,
    *,
    users: int,
    seconds: float,
    connections: int,
    loader: Callable[..., Load],
    photo: bytes,
    out: IO[str],
    rounds: int = 2,
    processes: int = 1,
) -> list[Row]:
    folder = Path(tempfile.mkdtemp(prefix="avatar-reads-"))
    media_root = folder / "media"
    url = database_url or f"sqlite+aiosqlite:///{folder / 'avatars.db'}"
    rows: list[Row] = []
    try:
        with spawned_server(
            database_url=url,
            media_root=str(media_root),
            public_base_url=PUBLIC_BASE_URL,
            log_level="INFO",
            workers="2",
            processes=str(processes),
        ) as service:
            started = time.perf_counter()
            user_ids = seed(service, users, photo)
            print(
                f"{label}: {users} avatars uploaded in {time.perf_counter() - started:.1f} s",
                file=out,
                flush=True,
            )
            documents = [json.loads(fetch(service.url, f"/users/{u}/avatar")[1]) for u in user_ids]

            def key(document: dict[str, Any], name: str) -> str:
                variant = next(v for v in document["variants"] if v["name"] == name)
                return str(variant["url"]).removeprefix(f"{PUBLIC_BASE_URL}/media/")

            paths = {
                "document": [f"/users/{u}/avatar" for u in user_ids],
                # The stored WebP square, as a client that lists WebP gets it (a client without
                # an Accept header gets a JPEG rendition, which the references do not make).
                "image": [f"/avatars/{u}?size={SQUARE}&format=webp" for u in user_ids],
                "image_file": [f"/media/{key(d, f'thumb-{SQUARE}')}" for d in documents],
                "media": [f"/media/{key(d, MEDIA_VARIANT)}" for d in documents],
            }
            with (
                spawned_minimal(url, media_root, processes) as minimal,
                running_nginx(
                    folder / "nginx",
                    port=_free_port(),
                    upstream=service.url,
                    media_root=media_root,
                ) as nginx,
            ):
                _check_same_bytes(service.url, minimal.url, nginx, paths)
                plan = [
                    ("document", "service", service.url, service.pid, paths["document"]),
                    ("document", "minimal app", minimal.url, minimal.pid, paths["document"]),
                    (f"size={SQUARE}", "service", service.url, service.pid, paths["image"]),
                    (f"size={SQUARE}", "minimal app", minimal.url, minimal.pid, paths["image"]),
                    (f"size={SQUARE}", "nginx (/media)", nginx, None, paths["image_file"]),
                    ("media", "service", service.url, service.pid, paths["media"]),
                    ("media", "nginx", nginx, None, paths["media"]),
                ]
                best: dict[tuple[str, str], Load] = {}
                for round_ in range(rounds):
                    # The second round in the other order: what ran first meets the same noise.
                    for read, server, base, pid, targets in plan[:: 1 if round_ % 2 == 0 else -1]:
                        load = measure(
                            loader,
                            base,
                            targets,
                            seconds=seconds,
                            connections=connections,
                            pid=pid,
                        )
                        kept = best.get((read, server))
                        if kept is None or load.per_second > kept.per_second:
                            best[(read, server)] = load
                rows = [Row(read, server, best[(read, server)]) for read, server, *_ in plan]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def _check_same_bytes(service: str, minimal: str, nginx: str, paths: dict[str, list[str]]) -> None:
    """The references answer what the service answers, or the ratios would mean nothing."""
    pairs = [
        (service, minimal, paths["document"][0], paths["document"][0]),
        (service, minimal, paths["image"][0], paths["image"][0]),
        (service, nginx, paths["image"][0], paths["image_file"][0]),
        (service, nginx, paths["media"][0], paths["media"][0]),
    ]
    for ours, theirs, our_path, their_path in pairs:
        mine, reference = fetch(ours, our_path), fetch(theirs, their_path)
        if mine != reference or mine[0] != 200:
            raise RuntimeError(f"{theirs}{their_path} does not answer as {ours}{our_path}")


def report(label: str, rows: list[Row], out: IO[str]) -> dict[str, float]:
    """The table for one database, then the service's ratio to each reference."""
    print(f"\n{label}", file=out)
    print(
        f"| {'read':<9} | {'server':<14} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} "
        f"| {'errors':>6} | {'CPU us/req':>10} |",
        file=out,
    )
    for row in rows:
        load = row.load
        cpu = f"{load.cpu_us:.0f}" if load.cpu_us is not None else "-"
        print(
            f"| {row.read:<9} | {row.server:<14} | {load.per_second:7.0f} | {load.p50_ms:7.1f} "
            f"| {load.p99_ms:7.1f} | {load.errors:6d} | {cpu:>10} |",
            file=out,
        )
    by = {(row.read, row.server): row.load for row in rows}
    ratios: dict[str, float] = {}
    for read, reference in (
        ("document", "minimal app"),
        (f"size={SQUARE}", "minimal app"),
        (f"size={SQUARE}", "nginx (/media)"),
        ("media", "nginx"),
    ):
        ours, theirs = by[(read, "service")], by[(read, reference)]
        ratio = ours.per_second / theirs.per_second if theirs.per_second else float("nan")
        ratios[f"{read} service / {reference}"] = ratio
        print(f"{read}: service / {reference} = {ratio:.3f}x req/s", file=out)
    out.flush()
    return ratios


def run(
    *,
    users: int = 1000,
    seconds: float = 10.0,
    connections: int = 32,
    postgres_url: str | None = DEFAULT_POSTGRES,
    loader: str | None = None,
    photo_size: tuple[int, int] = (640, 480),
    rounds: int = 2,
    processes: int = 1,
    out: IO[str] = sys.stdout,
) -> dict[str, dict[str, float]]:
    """Every read on SQLite, then on PostgreSQL (a database made for the run and dropped)."""
    if nginx_binary() is None:
        raise SystemExit("nginx is not installed (make install-nginx)")
    chosen = loader or ("wrk" if wrk_binary() else "python")
    if chosen == "wrk" and wrk_binary() is None:
        raise SystemExit("wrk is not installed (make install-wrk), or use --loader python")
    print(
        f"{users} users, {connections} connections, {seconds:g} s a read, best of {rounds} "
        f"rounds, {processes} server process{'es' if processes > 1 else ''} each, "
        f"load from {chosen}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        file=out,
        flush=True,
    )
    photo = phone_photo(*photo_size)
    common: dict[str, Any] = {
        "users": users,
        "seconds": seconds,
        "connections": connections,
        "loader": LOADERS[chosen],
        "photo": photo,
        "out": out,
        "rounds": rounds,
        "processes": processes,
    }
    results = {"SQLite": report("SQLite", run_database("SQLite", None, **common), out)}
    if postgres_url:
        results["PostgreSQL"] = _on_postgres(postgres_url, common, out)
    return results


def _on_postgres(postgres_url: str, common: dict[str, Any], out: IO[str]) -> dict[str, float]:
    from sqlalchemy.engine import make_url

    from cluster.local import create_database, drop_database

    name = f"avatar_reads_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_database(postgres_url, name))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        return report("PostgreSQL", run_database("PostgreSQL", url, **common), out)
    finally:
        asyncio.run(drop_database(postgres_url, name))


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--serve-minimal"]:
        serve_minimal(int(arguments[1]))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reads", description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="of load per read and server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="the best of these counts")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes of the service (AVATAR_PROCESSES) and of the minimal app",
    )
    parser.add_argument("--loader", choices=sorted(LOADERS), help="default: wrk when installed")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(arguments)
    run(
        users=args.users,
        seconds=args.seconds,
        connections=args.connections,
        postgres_url=None if args.no_postgres else args.postgres_url,
        loader=args.loader,
        rounds=args.rounds,
        processes=args.processes,
    )


if __name__ == "__main__":
    main()
