"""Renditions made later from the stored original: the crop, the side, the format, the motion,
and nothing but pixels in any output."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.core.variants import AVIF, JPEG, PNG, WEBP
from app.imaging.pipeline import (
    CropBox,
    PipelineOptions,
    derive_square,
    encode_as,
    process_image,
    webp_has_alpha,
)
from benchmarks.formats import _ssim_numpy
from tests.images import assert_clean_image, encode, jpeg_with_metadata, srgb_profile_bytes

FORMATS = (AVIF, WEBP, JPEG, PNG)


def stored_original(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    return process_image(encode(image, fmt, **options)).variant("original").data


def halves() -> Image.Image:
    """300x200: the left 150 px red, the rest blue."""
    image = Image.new("RGB", (300, 200), (20, 20, 220))
    image.paste((220, 20, 20), (0, 0, 150, 200))
    return image


@pytest.mark.parametrize("content_type", FORMATS)
def test_a_rendition_is_the_crop_at_the_side_in_the_format(content_type: str) -> None:
    original = stored_original(halves())
    left = derive_square(original, CropBox(0, 0, 150, 150), 48, content_type, still=False)
    right = derive_square(original, CropBox(150, 50, 150, 150), 48, content_type, still=False)
    for variant, colour in ((left, (220, 20, 20)), (right, (20, 20, 220))):
        assert (variant.width, variant.height, variant.content_type) == (48, 48, content_type)
        with Image.open(io.BytesIO(variant.data)) as image:
            assert image.size == (48, 48) and Image.MIME[image.format] == content_type
            pixel = image.convert("RGB").getpixel((24, 24))
        assert all(abs(a - b) < 24 for a, b in zip(pixel, colour, strict=True)), pixel
        assert_clean_image(variant.data, content_type)
    assert left.name == f"{content_type.split('/')[1]}-48"


def animation() -> bytes:
    frames = [Image.new("RGB", (120, 120), (60 * i, 30, 200 - 60 * i)) for i in range(3)]
    return (
        process_image(
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=150, loop=0)
        )
        .variant("original")
        .data
    )


@pytest.mark.parametrize("content_type", [AVIF, WEBP])
def test_animations_stay_animated_in_avif_and_webp(content_type: str) -> None:
    original = animation()
    moving = derive_square(original, CropBox(0, 0, 120, 120), 64, content_type, still=False)
    still = derive_square(original, CropBox(0, 0, 120, 120), 64, content_type, still=True)
    assert moving.frames == 3 and still.frames == 1
    fmt = content_type.split("/")[1]
    assert (moving.name, still.name) == (f"{fmt}-64", f"{fmt}-still-64")
    with Image.open(io.BytesIO(moving.data)) as image:
        assert image.n_frames == 3
        image.seek(1)
        image.load()
        assert image.info.get("duration") == 150
    assert_clean_image(moving.data, content_type)


@pytest.mark.parametrize("content_type", [JPEG, PNG])
def test_jpeg_and_png_are_always_the_still(content_type: str) -> None:
    variant = derive_square(animation(), CropBox(0, 0, 120, 120), 32, content_type, still=False)
    assert variant.frames == 1 and variant.name == f"{content_type.split('/')[1]}-32"


def test_no_encoder_takes_metadata_from_the_frame() -> None:
    """Pillow's JPEG, PNG and AVIF writers read EXIF or a profile from ``info``: encode_as
    empties it first (the frame here carries all of it, as a decoded file would)."""
    exif = Image.Exif()
    exif[0x010F] = "SecretCameraMaker"
    for content_type in FORMATS:
        frame = Image.new("RGB", (40, 40), (10, 200, 10))
        frame.info = {
            "exif": exif.tobytes(),
            "icc_profile": srgb_profile_bytes(),
            "xmp": b"<x:xmpmeta>secret-xmp</x:xmpmeta>",
            "comment": b"secret-comment",
            "dpi": (300, 300),
        }
        data = encode_as([frame], content_type, PipelineOptions())
        assert_clean_image(data, content_type, markers=(b"SecretCameraMaker", b"secret-xmp"))


def test_transparency_is_read_from_the_stored_webp_header() -> None:
    opaque = process_image(jpeg_with_metadata((100, 100)))
    see_through = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    see_through.paste((200, 0, 0, 255), (20, 20, 80, 80))
    clear = process_image(encode(see_through, "PNG"))
    assert not any(webp_has_alpha(variant.data) for variant in opaque.variants)
    assert all(webp_has_alpha(variant.data) for variant in clear.variants)
    lossless = encode(see_through, "WEBP", lossless=True)
    assert lossless[12:16] == b"VP8L" and webp_has_alpha(lossless)
    assert not webp_has_alpha(encode(Image.new("RGB", (8, 8)), "WEBP", lossless=True))


def test_jpeg_lays_transparency_on_the_background() -> None:
    see_through = Image.new("RGBA", (60, 60), (0, 0, 0, 0))
    options = PipelineOptions(jpeg_background=(0, 255, 0))
    data = encode_as([see_through], JPEG, options)
    with Image.open(io.BytesIO(data)) as image:
        red, green, blue = image.getpixel((30, 30))
    assert red < 10 and green > 245 and blue < 10


def test_the_benchmarks_numpy_ssim_is_scikit_images() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    random = np.random.default_rng(7)
    first = random.integers(0, 256, (40, 40, 3)).astype(np.float64)
    second = np.clip(first + random.normal(0, 20, first.shape), 0, 255)
    expected = metrics.structural_similarity(first, second, channel_axis=2, data_range=255.0)
    assert _ssim_numpy(first, second) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("content_type", FORMATS)
def test_replicas_make_the_same_bytes(content_type: str) -> None:
    """Two processes that race on one rendition write the same object under its key."""
    original = stored_original(halves(), "JPEG", quality=90)
    first, second = (
        derive_square(original, CropBox(40, 10, 180, 180), 96, content_type, still=False)
        for _ in range(2)
    )
    assert first.data == second.data
