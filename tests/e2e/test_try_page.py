"""The try-it page in Debian's Chromium, driven by Playwright, against a real server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.images import face_photo, jpeg_with_metadata
from tests.live import LiveServer, live_server

ARTIFACTS = Path(os.environ.get("AVATAR_TEST_ARTIFACTS", ROOT / "artifacts"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module (each test signs in as a user of its own or needs no fresh
    state), as `make run` serves it: development tokens on, on loopback, with the generated
    secret."""
    with live_server(tmp_path_factory.mktemp("try-page"), AVATAR_DEV_TOKENS="true") as running:
        yield running


def sign_in(page, server: LiveServer, user: str = "browser-user") -> None:
    page.goto(server.base_url + "/")
    page.get_by_label("User id").fill(user)
    page.get_by_role("button", name="Get a development token").click()
    page.get_by_text(f"Signed in as {user}").wait_for()


def test_upload_a_gps_photo_and_see_every_size(browser, server: LiveServer, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    requests_outside: list[str] = []
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith((server.base_url, "data:", "blob:"))
            else requests_outside.append(request.url)
        ),
    )
    sign_in(page, server)
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(jpeg_with_metadata((1200, 900), gps=True))
    page.get_by_label("Choose a photo").set_input_files(str(photo))
    page.locator("#crop-area").wait_for(state="visible")

    upload = page.get_by_role("button", name="Upload")
    assert upload.is_enabled()
    upload.click()
    page.locator("#result").wait_for(state="visible")

    report = page.locator("#removed-report").inner_text()
    assert "GPS position removed" in report
    assert page.locator("#upload-status").inner_text() == "Uploaded."
    assert int(page.locator("#progress").get_attribute("value") or 0) == 100 or (
        page.locator("#progress").evaluate("p => p.value") == 100
    )

    page.wait_for_function(
        "() => [...document.querySelectorAll('#result img')].every(i => i.complete)"
    )
    original = page.locator("#original-image").evaluate(
        "i => [i.complete, i.naturalWidth, i.naturalHeight]"
    )
    assert original == [True, 1200, 900]
    sizes = page.locator("#variants img").evaluate_all(
        "imgs => imgs.map(i => [i.dataset.variant, i.naturalWidth, i.naturalHeight])"
    )
    assert ["thumb", 400, 400] in sizes
    assert all(width == height and width > 0 for _, width, height in sizes)
    document = json.loads(page.locator("#json-document").inner_text())
    assert document["avatar_url"].startswith(server.base_url)
    placeholder = document["placeholder"]
    assert placeholder["blurhash"] in page.locator("#placeholder-text").inner_text()
    swatch = page.locator("#placeholder-swatch").evaluate(
        "e => getComputedStyle(e).backgroundColor"
    )
    red, green, blue = (int(placeholder["dominant_color"][i : i + 2], 16) for i in (1, 3, 5))
    assert swatch == f"rgb({red}, {green}, {blue})"
    painted = page.locator("#placeholder-canvas").evaluate(
        "c => Array.from(c.getContext('2d').getImageData(16, 16, 1, 1).data)"
    )
    assert painted[3] == 255 and sum(painted[:3]) > 0, painted  # the BlurHash was drawn
    assert "curl -H" in page.locator("#curl-command").inner_text()
    # The document's <picture>: Chromium shows AVIF, at the width of 96 CSS px on this screen.
    page.wait_for_function("() => document.getElementById('picture-image').dataset.picked")
    assert page.locator("#picture-image").get_attribute("data-picked") == "avif-128.avif"
    assert '<source type="image/avif"' in page.locator("#picture-markup").inner_text()
    assert not requests_outside, requests_outside
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "try-page.png"), full_page=True)


def test_an_invalid_file_shows_a_readable_error(browser, server: LiveServer, tmp_path) -> None:
    page = browser.new_page()
    sign_in(page, server)
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are my notes, not a photo")
    page.get_by_label("Choose a photo").set_input_files(str(fake))
    page.get_by_role("button", name="Upload").click()
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible")
    assert "not a photo the service accepts" in alert.inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "try-page-error.png"), full_page=True)


def test_crop_by_keyboard_on_a_phone_screen(browser, server: LiveServer, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 360, "height": 740}, is_mobile=True)
    sign_in(page, server, "phone-user")
    photo = tmp_path / "wide.jpg"
    photo.write_bytes(jpeg_with_metadata((800, 400), gps=False))
    page.get_by_label("Choose a photo").set_input_files(str(photo))
    page.locator("#crop-area").wait_for(state="visible")

    page.get_by_label("Crop to a square I choose").check()
    size = page.get_by_label("Size")
    size.focus()
    for _ in range(100):
        page.keyboard.press("ArrowLeft")  # smaller square: 300 px
    left = page.get_by_label("Left edge")
    left.focus()
    page.keyboard.press("End")  # all the way right
    page.get_by_role("button", name="Upload").click()
    page.locator("#result").wait_for(state="visible")
    curl = page.locator("#curl-command").inner_text()
    assert "crop=500,0,300,300" in curl, curl
    original = page.locator("#original-image").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert original == [300, 300]
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 360, f"the page scrolls sideways on a phone: {width}px"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "try-page-phone.png"), full_page=True)


def test_the_proposed_square_is_shown_around_the_face_and_can_be_moved(
    browser, server: LiveServer, tmp_path
) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    sign_in(page, server, "face-user")
    photo = tmp_path / "me.jpg"
    data, (face_x, _y, face_w, _h) = face_photo((1200, 600), face_left=900, face_width=200)
    photo.write_bytes(data)
    page.get_by_label("Choose a photo").set_input_files(str(photo))
    page.locator("#crop-area").wait_for(state="visible")
    page.get_by_role("button", name="Upload").click()
    page.locator("#result").wait_for(state="visible")

    source = page.locator("#square-source")
    assert source.get_attribute("data-source") == "face"
    assert "around the face" in source.inner_text()
    document = json.loads(page.locator("#json-document").inner_text())
    x, _y, side, _ = document["crop"]
    assert x <= face_x and face_x + face_w <= x + side  # the face is inside the square
    # The box is drawn where the square is: right of the middle of the photo.
    stage = page.locator("#square-image").bounding_box()
    box = page.locator("#square-box").bounding_box()
    assert stage and box and box["x"] > stage["x"] + stage["width"] / 2

    across = page.get_by_label("Square across")
    across.focus()
    page.keyboard.press("Home")  # all the way left
    page.get_by_role("button", name="Save this square").click()
    page.get_by_text("Saved: every size was cut again").wait_for()
    document = json.loads(page.locator("#json-document").inner_text())
    assert document["crop_source"] == "client"
    assert document["crop"][0] == 0 and document["crop"][2] == side
    assert page.locator("#square-source").get_attribute("data-source") == "client"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "try-page-square.png"), full_page=True)
