from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from app.core.errors import CorruptImage, DimensionsTooLarge, TooManyPixels, UnsupportedFormat
from app.imaging.pipeline import PipelineOptions, process_image, sniff
from tests.images import (
    assert_clean_webp,
    cmyk_jpeg_with_profile,
    encode,
    jpeg_with_metadata,
    marked_orientation_jpeg,
    upright_marker,
)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=False))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0rest", "JPEG"),
        (b"\x89PNG\r\n\x1a\nrest", "PNG"),
        (b"GIF89a....", "GIF"),
        (b"GIF87a....", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
    ],
)
def test_sniff_reads_type_from_magic_bytes(data: bytes, expected: str) -> None:
    assert sniff(data) == expected


@pytest.mark.parametrize(
    "data", [b"", b"BM\x00\x00", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%PDF-1.4", b"II*\x00"]
)
def test_upload_rejects_non_allowlisted_content(data: bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        process_image(data)


def test_tiff_named_as_jpeg_is_still_rejected() -> None:
    tiff = encode(Image.new("RGB", (8, 8)), "TIFF")
    with pytest.raises(UnsupportedFormat):
        process_image(tiff)


def test_outputs_are_webp_original_and_square_thumbnail() -> None:
    result = process_image(jpeg_with_metadata((800, 600)))
    original, thumb = result.variant("original"), result.variant("thumb")
    assert (original.width, original.height) == (800, 600)
    assert (thumb.width, thumb.height) == (400, 400)
    assert decoded(original.data).size == (800, 600)
    assert decoded(thumb.data).size == (400, 400)
    assert original.content_type == thumb.content_type == "image/webp"


def test_thumbnail_is_never_upscaled() -> None:
    result = process_image(encode(Image.new("RGB", (120, 90), (1, 2, 3)), "PNG"))
    thumb = result.variant("thumb")
    assert (thumb.width, thumb.height) == (90, 90)


def test_thumbnail_is_a_centre_crop() -> None:
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (100, 0, 200, 100))  # red centre square
    result = process_image(encode(image, "PNG"), PipelineOptions(thumbnail_size=50))
    thumb = decoded(result.variant("thumb").data).convert("RGB")
    assert thumb.size == (50, 50)
    for point in [(2, 2), (25, 25), (47, 47)]:
        assert close(thumb.getpixel(point), (255, 0, 0)), point


def test_every_byte_of_metadata_is_stripped() -> None:
    data = jpeg_with_metadata(orientation=6)
    assert b"SecretCameraMaker" in data and b"secret-xmp" in data and b"secret-comment" in data
    result = process_image(data)
    markers = (b"SecretCameraMaker", b"SecretModel", b"secret-xmp", b"secret-comment")
    for variant in result.variants:
        assert_clean_webp(variant.data, markers=markers)


def test_icc_profile_is_not_carried_to_the_output() -> None:
    from tests.images import srgb_profile_bytes

    data = encode(Image.new("RGB", (32, 32), (10, 200, 10)), "PNG", icc_profile=srgb_profile_bytes())
    for variant in process_image(data).variants:
        assert_clean_webp(variant.data)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_the_pixels(orientation: int) -> None:
    result = process_image(marked_orientation_jpeg(orientation))
    assert result.orientation == orientation
    out = decoded(result.variant("original").data).convert("RGB")
    expected = upright_marker()
    assert out.size == expected.size
    for point in [(5, 5), (10, 30), (50, 20), (45, 5)]:
        assert close(out.getpixel(point), expected.getpixel(point)), (orientation, point)


def test_hostile_orientation_value_is_ignored() -> None:
    value = b"<?php system($_GET['c']); ?>\0"
    # A little-endian TIFF block with one IFD entry: Orientation, type ASCII, pointing at value.
    ifd = struct.pack("<HHHII", 1, 0x0112, 2, len(value), 26) + struct.pack("<I", 0)
    exif = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd + value
    data = encode(Image.new("RGB", (40, 20), (9, 9, 9)), "JPEG", exif=exif)
    result = process_image(data)
    assert (result.width, result.height, result.orientation) == (40, 20, 1)
    assert_clean_webp(result.variant("original").data, markers=(b"<?php",))


def test_cmyk_is_converted_to_rgb() -> None:
    result = process_image(cmyk_jpeg_with_profile())
    out = decoded(result.variant("original").data)
    assert out.mode == "RGB"
    red, green, blue = out.getpixel((10, 10))
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize(
    "name",
    [
        "pillow-tests/xmp_test.jpg",  # Adobe RGB (1998)
        "libvips-testsuite/sample.jpg",  # A98
        "thumbor-fixtures/cmyk-icc.jpg",  # CMYK, U.S. Web Coated (SWOP)
        "thumbor-fixtures/grayscale-icc.jpg",  # grey, Dot Gain 20%
    ],
)
def test_embedded_profile_is_converted_to_srgb(corpus, name: str) -> None:
    from PIL import ImageCms

    source = Image.open(corpus / name)
    source.load()
    profile = ImageCms.ImageCmsProfile(io.BytesIO(source.info["icc_profile"]))
    srgb = ImageCms.createProfile("sRGB")
    reference = ImageCms.profileToProfile(source, profile, srgb, outputMode="RGB")
    naive = source.convert("RGB")

    result = process_image((corpus / name).read_bytes())
    out = decoded(result.variant("original").data).convert("RGB")
    assert out.size == reference.size

    def mean_error(a: Image.Image, b: Image.Image) -> float:
        pixels = list(zip(a.get_flattened_data(), b.get_flattened_data(), strict=True))[::97]
        return sum(abs(x - y) for pa, pb in pixels for x, y in zip(pa, pb, strict=True)) / (
            3 * len(pixels)
        )

    to_reference = mean_error(out, reference)
    assert to_reference < 4, to_reference  # WebP loss only
    assert to_reference < mean_error(out, naive), "output matches the unconverted numbers"


def test_alpha_is_kept() -> None:
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (16, 16, 48, 48))
    out = decoded(process_image(encode(image, "PNG")).variant("original").data)
    assert out.mode == "RGBA"
    assert out.getpixel((2, 2))[3] == 0
    assert out.getpixel((32, 32))[3] == 255


def test_palette_with_transparency_keeps_alpha() -> None:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
    image.paste(1, (8, 8, 24, 24))
    data = encode(image, "GIF", transparency=0)
    out = decoded(process_image(data).variant("original").data)
    assert out.mode == "RGBA"
    assert out.getpixel((1, 1))[3] == 0
    assert close(out.getpixel((16, 16)), (255, 0, 0, 255))


def test_opaque_images_drop_the_alpha_channel() -> None:
    image = Image.new("RGBA", (16, 16), (10, 20, 30, 255))
    out = decoded(process_image(encode(image, "PNG")).variant("original").data)
    assert out.mode == "RGB"


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (16, 16), 32768)  # mid grey in 16 bits
    out = decoded(process_image(encode(image, "PNG")).variant("original").data).convert("L")
    assert 110 <= out.getpixel((8, 8)) <= 145


def test_one_bit_image_is_accepted() -> None:
    image = Image.new("1", (20, 20), 1)
    out = decoded(process_image(encode(image, "PNG")).variant("original").data).convert("L")
    assert out.getpixel((5, 5)) > 240


def test_animated_gif_keeps_the_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = decoded(process_image(data).variant("original").data).convert("RGB")
    assert close(out.getpixel((10, 10)), (255, 0, 0))


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG header declaring a huge canvas, with a tiny IDAT: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_upload_rejects_decompression_bomb_from_header() -> None:
    with pytest.raises(TooManyPixels):
        process_image(png_with_declared_size(20000, 20000))


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(TooManyPixels):
        process_image(data, PipelineOptions(max_pixels=9_999))


def test_side_limit_is_checked() -> None:
    data = png_with_declared_size(5000, 10)
    with pytest.raises(DimensionsTooLarge):
        process_image(data, PipelineOptions(max_dimension=4096))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_jpeg_is_corrupt(cut: float) -> None:
    data = jpeg_with_metadata((400, 300))
    with pytest.raises(CorruptImage):
        process_image(data[: int(len(data) * cut)])


def test_png_magic_with_garbage_is_corrupt_not_unsupported() -> None:
    with pytest.raises(CorruptImage):
        process_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
