"""Decoding work bounded per upload: files of little data and much work are refused from their
structure, before Pillow sees them; every frame's extent is checked; Pillow's own pixel limit
agrees with the service's; orientation comes from EXIF only."""

from __future__ import annotations

import pytest
from PIL import Image

from app.core.errors import ImageTooComplex, TooManyPixels
from app.imaging import pipeline
from app.imaging.pipeline import (
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    PipelineOptions,
    ProcessedImage,
    configure_pillow,
    process_image,
)
from tests.images import (
    encode,
    gif_with_a_frame_past_its_screen,
    gif_with_comment_blocks,
    jpeg_with_empty_segments,
    jpeg_with_xmp_orientation,
    marked_orientation_jpeg,
    measured,
    png_with_empty_chunks,
    progressive_jpeg_with_scans,
)


@pytest.fixture
def pillow_never_opens(monkeypatch):
    """Refusals below must come from the structure walk, before Pillow parses anything."""

    def fail(*args, **kwargs):
        raise AssertionError("Pillow was asked to open the file")

    monkeypatch.setattr(pipeline.Image, "open", fail)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(progressive_jpeg_with_scans(MAX_JPEG_SCANS + 1), id="jpeg-scans"),
        pytest.param(progressive_jpeg_with_scans(50_000), id="jpeg-50000-scans"),
        pytest.param(jpeg_with_empty_segments(MAX_JPEG_SEGMENTS + 1), id="jpeg-segments"),
        pytest.param(png_with_empty_chunks(10_000), id="png-chunks"),
        pytest.param(gif_with_comment_blocks(20_000), id="gif-sub-blocks"),
    ],
)
def test_files_of_countless_scans_or_chunks_are_refused_before_decoding(
    data: bytes, pillow_never_opens
) -> None:
    with pytest.raises(ImageTooComplex) as refused:
        process_image(data)
    assert refused.value.status == 422
    assert refused.value.code == "image_too_complex"


def test_the_largest_tolerated_structures_are_still_images() -> None:
    # At the limits (the files' own segments and blocks included), with small pictures.
    assert process_image(progressive_jpeg_with_scans(MAX_JPEG_SCANS, (256, 256))).width == 256
    assert process_image(jpeg_with_empty_segments(MAX_JPEG_SEGMENTS - 16)).width == 64
    assert process_image(png_with_empty_chunks(4000)).width == 64
    assert process_image(gif_with_comment_blocks(4000)).width == 16


def test_a_gif_frame_past_its_small_screen_ends_the_animation_undecoded() -> None:
    # 107 KB of this shape made the server allocate 1.7 GB: a 16x16 screen, a 12000x12000 frame
    # for which the decoder grew its canvas. 9000 a side here stays under Pillow's default
    # limit, whose warning the tests turn into an error: the pipeline alone must stop it.
    data = gif_with_a_frame_past_its_screen((9000, 9000))
    assert len(data) < 100
    result, _seconds, peak_mb = measured(process_image, data)
    assert isinstance(result, ProcessedImage), result
    assert (result.frames, result.width, result.height) == (1, 16, 16)
    assert peak_mb < 50


@pytest.fixture
def pillow_limit():
    before = Image.MAX_IMAGE_PIXELS
    yield configure_pillow
    Image.MAX_IMAGE_PIXELS = before


def test_pillow_refuses_exactly_what_the_service_refuses(pillow_limit) -> None:
    options = PipelineOptions(max_pixels=40 * 30)
    pillow_limit(options.max_pixels)
    at_limit = encode(Image.new("RGB", (40, 30), (1, 2, 3)), "PNG")
    over = encode(Image.new("RGB", (41, 30), (1, 2, 3)), "PNG")
    assert process_image(at_limit, options).width == 40
    with pytest.raises(TooManyPixels):
        process_image(over, options)
    # Pillow alone, without the service's check in front: refused at the same limit, not twice it.
    assert pipeline.open_image(at_limit, "PNG").size == (40, 30)
    with pytest.raises(TooManyPixels):
        pipeline.open_image(over, "PNG")


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_xmp_orientation_is_ignored_as_browsers_do(orientation: int) -> None:
    result = process_image(jpeg_with_xmp_orientation(orientation))
    assert result.orientation == 1
    assert (result.width, result.height) == (60, 40)  # not turned
    assert "xmp" in result.metadata_removed
    # EXIF orientation is still applied.
    assert process_image(marked_orientation_jpeg(orientation)).orientation == orientation
