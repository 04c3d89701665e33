"""The production answer for /media: Debian's nginx runs deploy/nginx/avatar.conf (only its port,
the service's address and the media folder changed) in front of a real server, and its /media
answers carry the service's own bytes and headers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from benchmarks.nginx import nginx_binary, running_nginx
from tests.conftest import missing
from tests.live import LiveServer, free_port, live_server

pytestmark = pytest.mark.server

# The headers the service's /media route sets, which nginx must set the same.
MEDIA_HEADERS = (
    "content-type",
    "content-length",
    "cache-control",
    "x-content-type-options",
    "content-security-policy",
    "cross-origin-resource-policy",
)


@contextmanager
def nginx_in_front(tmp_path: Path, server: LiveServer, media_root: Path) -> Iterator[str]:
    if nginx_binary() is None:
        missing("nginx is not installed (make install-nginx)")
    with running_nginx(
        tmp_path / "nginx", port=free_port(), upstream=server.base_url, media_root=media_root
    ) as base:
        yield base


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((640, 480)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_nginx_serves_media_with_the_services_bytes_and_headers(tmp_path: Path) -> None:
    media_root = tmp_path / "data" / "media"
    with live_server(tmp_path) as server, nginx_in_front(tmp_path, server, media_root) as proxy:
        token = server.token("nginx-user")
        uploaded = httpx.post(
            f"{proxy}/users/me/avatar",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": ("me.jpg", photo(), "image/jpeg")},
            timeout=60,
        )
        assert uploaded.status_code == 201, uploaded.text
        # Everything but /media goes to the service, which sees nginx's Host.
        document = httpx.get(f"{proxy}/users/nginx-user/avatar", timeout=10)
        assert document.status_code == 200
        assert document.json() == uploaded.json()
        urls = [variant["url"] for variant in document.json()["variants"]]
        assert len(urls) >= 5 and all(url.startswith(f"{proxy}/media/") for url in urls)

        for url in urls:
            path = url.removeprefix(proxy)
            assert (media_root / path.removeprefix("/media/")).is_file()
            direct = httpx.get(f"{server.base_url}{path}", timeout=10)
            served = httpx.get(url, timeout=10)
            assert direct.status_code == served.status_code == 200
            assert served.content == direct.content
            assert "uvicorn" not in served.headers.get("server", "")  # from disk, not proxied
            for name in MEDIA_HEADERS:
                assert served.headers.get(name) == direct.headers[name], name
            # nginx's own ETag, and its 304 with the same caching headers.
            again = httpx.get(url, headers={"If-None-Match": served.headers["etag"]}, timeout=10)
            assert again.status_code == 304 and again.content == b""
            for name in MEDIA_HEADERS[2:]:
                assert again.headers.get(name) == direct.headers[name], name

        # What is not a stored file gets the service's own 404, problem+json, not cached.
        key_folder = urls[0].removeprefix(f"{proxy}/media/").rsplit("/", 1)[0]
        (media_root / key_folder / ".tmp-unfinished").write_bytes(b"partial")
        for path in (
            "/media/avatars/nobody/original.webp",
            f"/media/{key_folder}",
            f"/media/{key_folder}/",
            f"/media/{key_folder}/.tmp-unfinished",
            "/media/../data/app.db",
        ):
            direct = httpx.get(f"{server.base_url}{path}", timeout=10)
            served = httpx.get(f"{proxy}{path}", timeout=10)
            assert served.status_code == 404, path
            assert served.headers["content-type"] == "application/problem+json", path
            assert served.json()["code"] == direct.json()["code"], path
            assert "immutable" not in served.headers.get("cache-control", ""), path
