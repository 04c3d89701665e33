"""A cluster on one machine: N replicas of ``avatar-service serve`` on loopback ports behind
HAProxy, health-checked on ``/readyz``, sharing the local PostgreSQL, an S3 endpoint (moto's
server) and Redis.

    client -> HAProxy :port -> replica 1..N -> pg proxy -> PostgreSQL (the machine's server)
                                            -> s3 proxy -> moto's S3 server
                                            -> redis-server (the cluster's own)

The proxies (``cluster.tcpproxy``) let the database and S3 be cut and restored without
stopping the servers behind them; Redis is a private ``redis-server`` on a port of its own, so
that it can be stopped without touching anyone else's. Every process runs in a session of its
own, so the cluster outlives the command that started it (``make cluster``) until
``make cluster-stop``; ``state.json`` in the state folder records the pids and ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = ROOT / ".cluster"
FALLBACK = "fallback-"  # HAProxy's backup entry of each replica
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BUCKET = "avatars"
REGION = "us-east-1"
# Fixed, fake credentials for moto; boto3 never looks for real ones (no profile, no metadata).
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "cluster",
    "AWS_SECRET_ACCESS_KEY": "cluster",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
# What the load balancer answers itself, as problem+json like the service: when no replica
# listens at all (503), and when the replica answering a request died (502). Both close the
# connection, so that a client does not send its next request on one the balancer drops.
BALANCER_ERRORS = {
    503: ("Service Unavailable", "service_unavailable", "No replica is ready; retry later."),
    502: ("Bad Gateway", "bad_gateway", "The replica answering this request stopped."),
}


def balancer_error(status: int) -> str:
    reason, code, detail = BALANCER_ERRORS[status]
    body = (
        f'{{"type": "urn:avatar-service:problem:{code}", "title": "{reason}", '
        f'"status": {status}, "detail": "{detail}", "code": "{code}"}}'
    )
    retry = "Retry-After: 2\r\n" if status == 503 else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/problem+json\r\n{retry}"
        f"Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}\n"
    )


class ClusterError(RuntimeError):
    pass


@contextlib.contextmanager
def s3_credentials() -> Iterator[None]:
    """The cluster's S3 credentials in this process's environment (boto3 reads them there),
    and the environment as it was afterwards."""
    saved = {name: os.environ.get(name) for name in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@dataclass
class Process:
    name: str
    argv: list[str]
    pid: int = 0
    port: int = 0
    # The kernel's start time of the process: a pid alone may have been reused since.
    started: int = 0

    def alive(self) -> bool:
        """Running (not a zombie), and still the process that was started."""
        if not self.pid:
            return False
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        return fields[0] != "Z" and int(fields[19]) == self.started

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)


def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


# The processes this process started, kept until reaped (an unreaped child is a zombie).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class Cluster:
    state_dir: Path
    port: int
    database_url: str  # the database the replicas use, directly (not through the proxy)
    rate_limit: str
    secret: str
    workers: int = 1
    shutdown_timeout: float = 10.0
    processes: dict[str, Process] = field(default_factory=dict)

    # -- settings -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def replicas(self) -> list[Process]:
        return [p for name, p in sorted(self.processes.items()) if name.startswith("replica-")]

    def settings_env(self) -> dict[str, str]:
        """The AVATAR_* settings every replica (and ``gc``, ``migrate``) runs with."""
        from sqlalchemy.engine import make_url

        database = make_url(self.database_url).set(port=self.processes["pg-proxy"].port)
        return {
            "AVATAR_ENV": "production",
            "AVATAR_JWT_SECRET": self.secret,
            "AVATAR_LOG_LEVEL": "WARNING",
            "AVATAR_DATABASE_URL": database.render_as_string(hide_password=False),
            "AVATAR_DATABASE_TIMEOUT": "3",
            "AVATAR_STORAGE": "s3",
            "AVATAR_S3_BUCKET": BUCKET,
            "AVATAR_S3_REGION": REGION,
            "AVATAR_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.processes['s3-proxy'].port}",
            "AVATAR_S3_ADDRESSING_STYLE": "path",
            "AVATAR_S3_CONNECT_TIMEOUT": "1",
            "AVATAR_S3_READ_TIMEOUT": "5",
            "AVATAR_S3_MAX_ATTEMPTS": "2",
            "AVATAR_REDIS_URL": f"redis://127.0.0.1:{self.processes['redis'].port}/0",
            "AVATAR_RATE_LIMIT": self.rate_limit,
            # A key held by a killed replica is taken over after this long.
            "AVATAR_IDEMPOTENCY_LOCK_TIMEOUT": "3",
            "AVATAR_PUBLIC_BASE_URL": self.base_url,
            "AVATAR_WORKERS": str(self.workers),
            "AVATAR_SHUTDOWN_TIMEOUT": str(self.shutdown_timeout),
        }

    def env(self, data_dir: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_", "AWS_"))}
        env.update(S3_CREDENTIALS)
        env.update(self.settings_env())
        env["AVATAR_DATA_DIR"] = str(data_dir or self.state_dir / "data")
        env["PYTHONPATH"] = str(ROOT)
        return env

    def settings(self):
        """The same settings, in this process (tokens, ``gc`` within ``s3_credentials()``)."""
        from app.core.config import load_settings

        values = {k.removeprefix("AVATAR_").lower(): v for k, v in self.settings_env().items()}
        return load_settings(_env_file=None, data_dir=self.state_dir / "data", **values)

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, process: Process, *, env: dict[str, str] | None = None) -> None:
        log = open(self.state_dir / "logs" / f"{process.name}.log", "ab")  # noqa: SIM115
        with log:
            popen = subprocess.Popen(
                process.argv,
                cwd=self.state_dir,
                env=env or self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `make cluster`; signals reach it alone
            )
        _children[popen.pid] = popen
        process.pid = popen.pid
        process.started = _start_time(popen.pid)
        self.processes[process.name] = process
        self.save()

    def _wait_listening(self, process: Process, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not listening(process.port):
            if not process.alive():
                raise ClusterError(f"{process.name} exited; see {self.log_path(process.name)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{process.name} did not listen on {process.port}")
            time.sleep(0.05)

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def replica_argv(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    def start_replica(self, name: str, *, wait: bool = True) -> Process:
        old = self.processes.get(name)
        port = old.port if old else free_port()
        process = Process(name, self.replica_argv(port), port=port)
        data_dir = self.state_dir / name
        data_dir.mkdir(exist_ok=True)
        self._spawn(process, env=self.env(data_dir))
        if wait:
            self.wait_ready(process)
        return process

    def wait_ready(self, process: Process, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{process.port}/readyz"
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            if not process.alive():
                raise ClusterError(f"{process.name} exited; see {self.log_path(process.name)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{process.name} was not ready in {timeout} s")
            time.sleep(0.1)

    def stop_process(self, name: str, *, timeout: float | None = None) -> None:
        process = self.processes.get(name)
        if process is None:
            return
        process.signal(signal.SIGTERM)
        deadline = time.monotonic() + (timeout or self.shutdown_timeout + 5)
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.alive():
            process.signal(signal.SIGKILL)
            while process.alive():
                time.sleep(0.05)
        _reap(process.pid)

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown at all, in-flight requests cut."""
        process = self.processes[name]
        process.signal(signal.SIGKILL)
        while process.alive():
            time.sleep(0.01)
        _reap(process.pid)

    def save(self) -> None:
        state = {k: v for k, v in asdict(self).items() if k not in ("state_dir", "processes")}
        state["processes"] = {name: asdict(p) for name, p in self.processes.items()}
        path = self.state_dir / "state.json"
        path.write_text(json.dumps(state, indent=2))
        path.chmod(0o600)  # it holds the signing secret

    @classmethod
    def load(cls, state_dir: Path) -> Cluster:
        state = json.loads((state_dir / "state.json").read_text())
        processes = {name: Process(**p) for name, p in state.pop("processes").items()}
        return cls(state_dir=state_dir, processes=processes, **state)

    # -- the faults -----------------------------------------------------------------------

    def cut(self, proxy: str) -> None:
        """``pg-proxy`` or ``s3-proxy``: refuse new connections and drop the open ones."""
        self.processes[proxy].signal(signal.SIGUSR1)
        _wait_until(lambda: not listening(self.processes[proxy].port), f"{proxy} cut")

    def restore(self, proxy: str) -> None:
        self.processes[proxy].signal(signal.SIGUSR2)
        _wait_until(lambda: listening(self.processes[proxy].port), f"{proxy} restored")

    def stop_redis(self) -> None:
        self.stop_process("redis", timeout=5)

    def start_redis(self) -> None:
        process = self.processes["redis"]
        self._spawn(Process("redis", process.argv, port=process.port))
        self._wait_listening(self.processes["redis"])


def start(
    *,
    replicas: int = 3,
    port: int = 0,
    state_dir: Path = DEFAULT_STATE_DIR,
    postgres_url: str = DEFAULT_POSTGRES_URL,
    database: str = "avatar_cluster",
    rate_limit: str = "30/minute",
    workers: int = 1,
    shutdown_timeout: float = 10.0,
) -> Cluster:
    """Start everything, migrate the database, create the bucket; return when HAProxy sees
    every replica ready. ``database`` is made anew on the server of ``postgres_url``: the S3
    server keeps its objects in memory, so rows from an earlier cluster would point at nothing."""
    for command in ("haproxy", "redis-server"):
        if shutil.which(command) is None:
            raise ClusterError(f"{command} is not installed (make install-haproxy; redis-server)")
    if (state_dir / "state.json").exists():
        previous = Cluster.load(state_dir)
        if any(p.alive() for p in previous.processes.values()):
            raise ClusterError(f"a cluster is running from {state_dir}; stop it first")
    if state_dir.exists():
        shutil.rmtree(state_dir)
    (state_dir / "logs").mkdir(parents=True)
    state_dir.chmod(0o700)

    from sqlalchemy.engine import make_url

    database_url = make_url(postgres_url).set(database=database)
    asyncio.run(create_database(postgres_url, database))
    cluster = Cluster(
        state_dir=state_dir,
        port=port or free_port(),
        database_url=database_url.render_as_string(hide_password=False),
        rate_limit=rate_limit,
        secret=secrets.token_urlsafe(48),
        workers=workers,
        shutdown_timeout=shutdown_timeout,
    )
    try:
        _start_backing_services(cluster, database_url.host or "127.0.0.1", database_url.port)
        # The replicas boot while the migration runs; the balancer starts once both are done.
        for index in range(1, replicas + 1):
            cluster.start_replica(f"replica-{index}", wait=False)
        migrated = subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate"],
            cwd=ROOT,
            env=cluster.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrated.returncode != 0:
            raise ClusterError(f"migrate failed: {migrated.stderr}")
        for process in cluster.replicas:
            cluster.wait_ready(process)
        _start_haproxy(cluster)
        wait_balanced(cluster)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _start_backing_services(cluster: Cluster, pg_host: str, pg_port: int | None) -> None:
    proxy = [sys.executable, "-m", "cluster.tcpproxy"]
    moto_port, s3_proxy_port, pg_proxy_port, redis_port = (free_port() for _ in range(4))
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]
    redis = ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", ""]
    redis += ["--appendonly", "no", "--dir", str(cluster.state_dir)]
    for name, argv, port in (
        ("s3", moto, moto_port),
        ("s3-proxy", [*proxy, str(s3_proxy_port), "127.0.0.1", str(moto_port)], s3_proxy_port),
        ("pg-proxy", [*proxy, str(pg_proxy_port), pg_host, str(pg_port or 5432)], pg_proxy_port),
        ("redis", redis, redis_port),
    ):
        cluster._spawn(Process(name, argv, port=port), env=_plain_env())
    for name in ("s3", "s3-proxy", "pg-proxy", "redis"):
        cluster._wait_listening(cluster.processes[name])
    import boto3

    client = boto3.session.Session(
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}")
    client.create_bucket(Bucket=BUCKET)
    client.close()


def haproxy_config(cluster: Cluster) -> str:
    servers = "\n".join(f"    server {p.name} 127.0.0.1:{p.port} check" for p in cluster.replicas)
    fallbacks = "\n".join(
        f"    server {FALLBACK}{p.name} 127.0.0.1:{p.port} backup" for p in cluster.replicas
    )
    return f"""# Written by cluster/local.py for this run.
global
    log stdout format raw local0
    maxconn 512
    # Room for a small upload's whole body (see http-buffer-request).
    tune.bufsize 65536
    stats socket {cluster.state_dir}/haproxy.sock mode 600 level admin

defaults
    mode http
    log global
    log-format "%ci:%cp %s %ST %tsc %Ta %HM %HU"
    timeout connect 1s
    timeout client 70s
    timeout server 70s
    # A connection refused (a replica stopping or stopped) is tried again on another replica;
    # a request a replica was answering when it died is not (it may have done its work).
    retries 3
    option redispatch 1
    # One connection per request to the replicas: a replica that got SIGTERM stops listening
    # and finishes what it has, and no request is ever sent on a connection it is closing.
    option http-server-close
    http-reuse never
    # The service answers some requests before reading their body (401, 429, 503 server_busy:
    # that is the point). If the balancer closed the client's connection with body bytes
    # still unread, the client would get a reset instead of that answer; so the body is read
    # first, up to the buffer (bigger uploads are streamed; nginx buffers them all by default).
    option http-buffer-request

frontend avatar
    bind 127.0.0.1:{cluster.port}
    default_backend replicas
    errorfile 503 {cluster.state_dir}/503.http
    errorfile 502 {cluster.state_dir}/502.http

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 1
{servers}
    # When no replica is ready (the database or S3 is down for all of them), every replica
    # gets traffic again rather than none: each answers for itself, a 503 problem with
    # Retry-After for what needs the missing part, and serves what does not. The errorfile
    # above is for when no replica listens at all.
    option allbackups
{fallbacks}
"""


def _start_haproxy(cluster: Cluster) -> None:
    for status in BALANCER_ERRORS:
        (cluster.state_dir / f"{status}.http").write_text(balancer_error(status))
    config = cluster.state_dir / "haproxy.cfg"
    config.write_text(haproxy_config(cluster))
    checked = subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], capture_output=True)
    if checked.returncode != 0:
        raise ClusterError(f"haproxy refused its configuration: {checked.stderr.decode()}")
    argv = ["haproxy", "-db", "-f", str(config)]
    cluster._spawn(Process("haproxy", argv, port=cluster.port), env=_plain_env())
    cluster._wait_listening(cluster.processes["haproxy"])


def admin(cluster: Cluster, command: str) -> str:
    """One command on HAProxy's admin socket; its answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(str(cluster.state_dir / "haproxy.sock"))
        sock.sendall(command.encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


def server_states(cluster: Cluster) -> dict[str, str]:
    """HAProxy's view of each replica: UP, DOWN, MAINT... (from its admin socket)."""
    states = {}
    for line in admin(cluster, "show servers state replicas").splitlines()[2:]:
        parts = line.split()
        if len(parts) > 6 and not parts[3].startswith(FALLBACK):
            # srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping; srv_admin_state:
            # non-zero when taken out by hand (maintenance, drain)
            op_state = {"0": "DOWN", "1": "STARTING", "2": "UP", "3": "STOPPING"}
            states[parts[3]] = "MAINT" if parts[6] != "0" else op_state.get(parts[5], parts[5])
    return states


def drain(cluster: Cluster, name: str) -> None:
    """Send a replica no new requests and wait until it has answered the ones it has, as
    Kubernetes takes a terminating pod out of the endpoints before its SIGTERM matters."""
    for server in (name, FALLBACK + name):
        admin(cluster, f"set server replicas/{server} state maint")

    def idle() -> bool:
        for line in admin(cluster, "show stat").splitlines():
            fields = line.split(",")
            ours = fields[0] == "replicas" and fields[1] in (name, FALLBACK + name)
            if ours and fields[4] and int(fields[4]) > 0:  # scur: requests in progress
                return False
        return True

    _wait_until(idle, f"{name} drained", cluster.shutdown_timeout)


def undrain(cluster: Cluster, name: str) -> None:
    for server in (name, FALLBACK + name):
        admin(cluster, f"set server replicas/{server} state ready")


def wait_balanced(cluster: Cluster, timeout: float = 30) -> None:
    """Until HAProxy sends traffic to every replica."""
    _wait_until(
        lambda: (
            set(server_states(cluster).values()) == {"UP"}
            and len(server_states(cluster)) == len(cluster.replicas)
        ),
        "every replica UP in HAProxy",
        timeout,
    )


def stop(cluster: Cluster) -> None:
    """Stop every process of the cluster: the balancer first, then the replicas (SIGTERM, so
    in-flight requests finish), then what they use."""
    order = ["haproxy", *(p.name for p in cluster.replicas), "s3-proxy", "pg-proxy", "s3", "redis"]
    for name in order:
        cluster.stop_process(name)
    with contextlib.suppress(OSError):
        (cluster.state_dir / "state.json").unlink()


async def _admin(postgres_url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE and DROP DATABASE need that)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def create_database(postgres_url: str, database: str) -> None:
    await drop_database(postgres_url, database)
    await _admin(postgres_url, f'CREATE DATABASE "{database}"')


async def drop_database(postgres_url: str, database: str) -> None:
    await _admin(postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_", "AWS_"))}
    env.update(S3_CREDENTIALS)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _reap(pid: int) -> None:
    # A child of this process (the tests and `make chaos` start them) is reaped here; one that
    # `make cluster` started is reaped by init.
    popen = _children.pop(pid, None)
    if popen is not None:
        popen.wait()


def _wait_until(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def running(**options: Any) -> Iterator[Cluster]:
    cluster = start(**options)
    try:
        yield cluster
    finally:
        stop(cluster)
