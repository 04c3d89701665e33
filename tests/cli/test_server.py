"""``serve``, ``migrate`` and ``token`` (app/cli/server.py) as a person runs them: subprocesses,
a real server, curl."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.conftest import ROOT, missing
from tests.images import jpeg_with_metadata
from tests.live import free_port, live_server, run_cli


@pytest.mark.server
def test_token_prints_only_the_token(tmp_path) -> None:
    result = run_cli(tmp_path, "token", "alice")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].count(".") == 2


@pytest.mark.server
def test_token_refused_in_production_without_secret(tmp_path) -> None:
    result = run_cli(tmp_path, "token", "alice", AVATAR_ENV="production")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "AVATAR_JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.server
def test_serve_refuses_to_start_in_production_without_secret(tmp_path) -> None:
    result = run_cli(tmp_path, "serve", "--port", str(free_port()), AVATAR_ENV="production")
    assert result.returncode == 2
    assert "AVATAR_JWT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--host", "0.0.0.0"], {}),
        (["--host", "::"], {}),
        (["--host", "192.0.2.10"], {}),
        ([], {"AVATAR_HOST": "0.0.0.0"}),
    ],
)
@pytest.mark.server
def test_serve_refuses_dev_tokens_on_an_address_others_reach(tmp_path, args, env) -> None:
    result = run_cli(
        tmp_path, "serve", "--port", str(free_port()), *args, AVATAR_DEV_TOKENS="true", **env
    )
    assert result.returncode == 2, result.stderr
    assert "AVATAR_DEV_TOKENS" in result.stderr and "loopback" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"AVATAR_JWT_SECRET": "configured-" + "s" * 40},
        {"AVATAR_JWKS_URL": "https://id.example.test/jwks.json"},
        {"AVATAR_ENV": "production", "AVATAR_JWT_SECRET": "p" * 48},
    ],
)
@pytest.mark.server
def test_serve_refuses_dev_tokens_beside_real_keys(tmp_path, env) -> None:
    result = run_cli(tmp_path, "serve", "--port", str(free_port()), AVATAR_DEV_TOKENS="true", **env)
    assert result.returncode == 2, result.stderr
    assert "AVATAR_DEV_TOKENS" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.server
def test_migrate_creates_the_schema(tmp_path) -> None:
    result = run_cli(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "avatar.db").is_file()
    again = run_cli(tmp_path, "migrate")
    assert again.returncode == 0, again.stderr


def test_migrations_are_reversible(tmp_path) -> None:
    import sqlite3

    from app.db.migrate import downgrade, upgrade

    path = tmp_path / "avatar.db"
    url = f"sqlite+aiosqlite:///{path}"

    def tables() -> set[str]:
        with sqlite3.connect(path) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {name for (name,) in rows}

    upgrade(url)
    assert "avatars" in tables()
    downgrade(url, "base")
    assert "avatars" not in tables()
    upgrade(url)
    assert "avatars" in tables()


@pytest.fixture
def server(tmp_path):
    with live_server(tmp_path) as running:
        yield running.base_url, tmp_path


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        missing("curl is not installed")
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.server
def test_readme_walkthrough_with_curl(server) -> None:
    """The README's quick start, step by step, against `avatar-service serve`."""
    base, cwd = server
    photo = cwd / "photo.jpg"
    photo.write_bytes(jpeg_with_metadata((1200, 900), orientation=6))
    token = run_cli(cwd, "token", "alice").stdout.strip()

    uploaded = curl(
        "-H", f"Authorization: Bearer {token}", "-F", f"file=@{photo}", f"{base}/users/me/avatar"
    )
    document = json.loads(uploaded.stdout)
    assert (document["width"], document["height"]) == (900, 1200)
    assert document["avatar_url"].startswith(f"{base}/media/")

    public = json.loads(curl(f"{base}/users/alice/avatar").stdout)
    assert public == document

    fetched = curl(
        "-o",
        str(cwd / "avatar.webp"),
        "-w",
        "%{http_code} %{content_type}",
        document["avatar_thumb_url"],
    )
    assert fetched.stdout == "200 image/webp"
    assert (cwd / "avatar.webp").read_bytes()[8:12] == b"WEBP"

    deleted = curl(
        "-X",
        "DELETE",
        "-H",
        f"Authorization: Bearer {token}",
        "-w",
        "%{http_code}",
        f"{base}/users/me/avatar",
    )
    assert deleted.stdout == "204"
    gone = curl("-w", "%{http_code}", "-o", "/dev/null", document["avatar_url"])
    assert gone.stdout == "404"


@pytest.mark.server
def test_sigterm_lets_in_flight_uploads_finish_and_refuses_new_ones(tmp_path) -> None:
    with live_server(tmp_path) as server:
        base, process = server.base_url, server.process
        token = server.token("alice")
        boundary = "slowboundary"
        photo = jpeg_with_metadata((800, 600))
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        step = len(photo) // 10 + 1
        started = threading.Event()

        def trickle():
            yield head
            started.set()
            for offset in range(0, len(photo), step):
                time.sleep(0.15)
                yield photo[offset : offset + step]
            yield tail

        result: dict[str, object] = {}

        def upload() -> None:
            response = httpx.post(
                f"{base}/users/me/avatar",
                content=trickle(),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
                timeout=30,
            )
            result["status"] = response.status_code
            result["body"] = response.text

        thread = threading.Thread(target=upload)
        thread.start()
        assert started.wait(10)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            httpx.get(f"{base}/healthz", timeout=2)
            refused = False
        except httpx.TransportError:
            refused = True
        thread.join(30)
        assert result.get("status") == 201, result
        assert refused, "a new connection was accepted after SIGTERM"
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert b"Traceback" not in server.log_path.read_bytes()


@pytest.mark.server
def test_serve_with_two_processes_logs_one_json_line_per_request(tmp_path) -> None:
    with live_server(tmp_path, AVATAR_PROCESSES="2") as server:
        for index in range(4):
            response = httpx.get(
                f"{server.base_url}/healthz", headers={"X-Request-ID": f"probe-{index}"}
            )
            assert response.headers["x-request-id"] == f"probe-{index}"
        server.process.terminate()
        server.process.wait(timeout=30)
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line]
    requests = [line for line in lines if line.get("logger") == "app.access"]
    assert {line["request_id"] for line in requests} >= {f"probe-{i}" for i in range(4)}
    assert all(line["route"] == "/healthz" and line["status"] == 200 for line in requests)
    assert {line["logger"] for line in lines} >= {"app.access"}


@pytest.mark.server
def test_readme_base64_upload_with_curl(server) -> None:
    """The README's JSON upload, run by bash exactly as written there."""
    base, cwd = server
    if shutil.which("base64") is None:
        missing("base64 is not installed")
    (cwd / "photo.jpg").write_bytes(jpeg_with_metadata((2000, 1500)))  # larger than one argument
    token = run_cli(cwd, "token", "alice").stdout.strip()
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split('{ printf \'{"filename"', 1)[1].split("```", 1)[0]
    command = ('{ printf \'{"filename"' + snippet).replace("http://127.0.0.1:8000", base)
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env={"TOKEN": token, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    document = json.loads(result.stdout)
    assert (document["width"], document["height"]) == (2000, 1500)
