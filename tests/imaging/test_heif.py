"""HEIC/HEIF (pillow-heif) and AVIF (Pillow) inputs: off by default, each switchable."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.core.errors import DimensionsTooLarge, TooManyPixels, UnsupportedFormat
from app.imaging.pipeline import DEFAULT_FORMATS, PipelineOptions, process_image, sniff
from tests.images import GPS_IFD, assert_clean_webp, encode, upright_marker

WITH_HEIF = PipelineOptions(formats=DEFAULT_FORMATS | {"HEIF"})
WITH_AVIF = PipelineOptions(formats=DEFAULT_FORMATS | {"AVIF"})


def heic(image: Image.Image, **options: object) -> bytes:
    return encode(image, "HEIF", quality=95, **options)


def avif(image: Image.Image, **options: object) -> bytes:
    return encode(image, "AVIF", quality=95, **options)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=False))


@pytest.mark.parametrize("make", [heic, avif])
def test_heic_and_avif_are_refused_by_default(make) -> None:
    with pytest.raises(UnsupportedFormat):
        process_image(make(upright_marker()))


def test_each_is_switched_on_alone() -> None:
    with pytest.raises(UnsupportedFormat):
        process_image(avif(upright_marker()), WITH_HEIF)
    with pytest.raises(UnsupportedFormat):
        process_image(heic(upright_marker()), WITH_AVIF)


@pytest.mark.parametrize(("make", "options"), [(heic, WITH_HEIF), (avif, WITH_AVIF)])
def test_heic_and_avif_are_converted_when_allowed(make, options) -> None:
    result = process_image(make(upright_marker()), options)
    out = decoded(result.variant("original").data)
    expected = upright_marker()
    assert out.size == expected.size
    for point in [(5, 5), (10, 30), (50, 20), (45, 5)]:
        assert close(out.getpixel(point), expected.getpixel(point)), point


@pytest.mark.parametrize(
    ("head", "found"),
    [
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "HEIF"),
        (b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic", "HEIF"),
        (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf", "AVIF"),
        (b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf", "AVIF"),
        (b"\0\0\0\x18ftypavis\0\0\0\0avismsf1", "AVIF"),
    ],
)
def test_iso_media_is_told_apart_by_its_brands(head: bytes, found: str) -> None:
    assert sniff(head) == found


def test_other_iso_media_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormat):
        sniff(b"\0\0\0\x18ftypisom\0\0\0\0isomiso2mp41")  # an MP4 video


@pytest.mark.parametrize(
    ("make", "options", "size", "error"),
    [
        (heic, WITH_HEIF, (20000, 20000), DimensionsTooLarge),
        (avif, WITH_AVIF, (4000, 4000), TooManyPixels),
    ],
)
def test_declared_size_is_checked_before_the_decoder_parses(make, options, size, error) -> None:
    data = bytearray(make(Image.new("RGB", (64, 48), (1, 2, 3))))
    at = data.find(b"ispe")
    assert at > 0
    data[at + 8 : at + 16] = size[0].to_bytes(4, "big") + size[1].to_bytes(4, "big")
    with pytest.raises(error):
        process_image(bytes(data), PipelineOptions(formats=options.formats, max_pixels=10**6))


def test_avif_exif_orientation_is_applied() -> None:
    stored = upright_marker().transpose(Image.Transpose.ROTATE_90)  # as orientation 6 stores it
    exif = Image.Exif()
    exif[0x0112] = 6
    result = process_image(avif(stored, exif=exif), WITH_AVIF)
    assert result.orientation == 6
    out = decoded(result.variant("original").data)
    expected = upright_marker()
    assert out.size == expected.size
    for point in [(5, 5), (10, 30), (50, 20), (45, 5)]:
        assert close(out.getpixel(point), expected.getpixel(point)), point


def test_heic_metadata_is_reported_and_removed() -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretPhoneMaker"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (52.0, 31.0, 12.0)})
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret-heic-xmp</x:xmpmeta>'
    result = process_image(heic(upright_marker(), exif=exif, xmp=xmp), WITH_HEIF)
    assert {"exif.gps", "exif.camera", "xmp"} <= set(result.metadata_removed)
    for variant in result.variants:
        assert_clean_webp(variant.data, markers=(b"SecretPhoneMaker", b"secret-heic-xmp"))
