"""Debian's nginx running deploy/nginx/avatar.conf in the foreground, for tests/test_nginx.py and
benchmarks/reads.py: the server block as shipped, with only its listen port, the service's
address and the media folder changed; everything nginx writes stays under one folder."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.server import stop

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "deploy" / "nginx" / "avatar.conf"
# What the shipped file says, and so what a deployment changes.
LISTEN = "listen 8080;"
UPSTREAM = "http://127.0.0.1:8000"
MEDIA = "alias /data/media/;"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def server_block(*, port: int, upstream: str, media_root: Path) -> str:
    """deploy/nginx/avatar.conf for this port, service address and media folder."""
    text = CONF.read_text()
    for default, value in (
        (LISTEN, f"listen 127.0.0.1:{port};"),
        (UPSTREAM, upstream),
        (MEDIA, f"alias {media_root}/;"),
    ):
        if default not in text:
            raise ValueError(f"{CONF.name} no longer says {default!r}")
        text = text.replace(default, value)
    return text


@contextmanager
def running_nginx(folder: Path, *, port: int, upstream: str, media_root: Path) -> Iterator[str]:
    """nginx serving on ``port`` until the block ends; yields its base URL. One process
    (``master_process off``): no user switch, so it reads ``media_root`` as its starter."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (make install-nginx)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "avatar.conf").write_text(
        server_block(port=port, upstream=upstream, media_root=media_root)
    )
    temp = "".join(
        f"    {name}_temp_path {folder / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n    access_log off;\n{temp}    include {folder / 'avatar.conf'};\n}}\n"
    )
    config = ["-p", str(folder), "-c", str(folder / "nginx.conf")]
    checked = subprocess.run([binary, "-t", *config], capture_output=True, text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx refused the configuration:\n{checked.stderr}")
    process = subprocess.Popen(
        [binary, *config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while not _answers(f"{base}/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                log = folder / "error.log"
                raise RuntimeError(
                    "nginx did not start:\n" + (log.read_text() if log.exists() else "")
                )
            time.sleep(0.05)
        yield base
    finally:
        stop(process, timeout=10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
