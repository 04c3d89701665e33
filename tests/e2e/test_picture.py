"""The document's ``<picture>`` sources in Debian's Chromium: the browser picks AVIF at the width
its screen needs, and the rendition behind that URL is made on its first request."""

from __future__ import annotations

import html
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.images import jpeg_with_metadata
from tests.live import LiveServer, live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("picture")) as running:
        yield running


def picture_markup(document: dict, *, css_size: int) -> str:
    """The README's markup: one <source> per entry of ``sources``, the JPEG one as the <img>."""
    *sources, fallback = document["sources"]
    assert fallback["type"] == "image/jpeg"
    lines = [
        f'<source type="{source["type"]}" srcset="{html.escape(source["srcset"])}" '
        f'sizes="{css_size}px">'
        for source in sources
    ]
    image = (
        f'<img id="avatar" srcset="{html.escape(fallback["srcset"])}" sizes="{css_size}px" '
        f'width="{css_size}" height="{css_size}" alt="">'
    )
    return "<!doctype html><picture>" + "".join(lines) + image + "</picture>"


@pytest.mark.parametrize(("scale", "width"), [(1, 128), (2, 256)])
def test_chromium_picks_the_avif_source_at_the_right_width(
    browser, server: LiveServer, scale: int, width: int
) -> None:
    user = f"picture-{scale}x"
    response = httpx.post(
        f"{server.base_url}/users/me/avatar",
        headers={"Authorization": f"Bearer {server.token(user)}"},
        files={"file": ("me.jpg", jpeg_with_metadata((900, 700)), "image/jpeg")},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    document = response.json()
    avif = next(source for source in document["sources"] if source["type"] == "image/avif")
    expected = next(
        entry.split(" ")[0] for entry in avif["srcset"].split(", ") if entry.endswith(f" {width}w")
    )

    page = browser.new_page(device_scale_factor=scale)
    page.set_content(picture_markup(document, css_size=128))
    page.wait_for_function(
        "() => { const i = document.getElementById('avatar'); "
        "return i.complete && i.naturalWidth > 0; }",
        timeout=30_000,
    )
    current_src, natural_width = page.eval_on_selector(
        "#avatar", "i => [i.currentSrc, i.naturalWidth]"
    )
    assert current_src == expected
    assert current_src.endswith(f"/avif-{width}.avif")
    assert natural_width == 128  # CSS pixels: the srcset's density corrects the intrinsic size
    # What the browser got is what the URL gives anyone: an AVIF of that width, kept.
    again = httpx.get(current_src, timeout=30)
    assert again.headers["content-type"] == "image/avif"
    assert again.headers["cache-control"] == "public, max-age=31536000, immutable"
    with Image.open(io.BytesIO(again.content)) as picture:
        assert picture.format == "AVIF" and picture.size == (width, width)
    page.close()
