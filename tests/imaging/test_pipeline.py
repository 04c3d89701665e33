from __future__ import annotations

import io
import struct

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
    png_with_declared_size,
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
    "data",
    [b"", b"BM\x00\x00", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%PDF-1.4", b"II*\x00"],
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

    data = encode(
        Image.new("RGB", (32, 32), (10, 200, 10)), "PNG", icc_profile=srgb_profile_bytes()
    )
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


# Sizes ------------------------------------------------------------------------------------------


def test_every_square_size_is_made_and_named() -> None:
    result = process_image(jpeg_with_metadata((800, 600)))
    sizes = {v.name: (v.width, v.height) for v in result.variants}
    assert sizes == {
        "original": (800, 600),
        "thumb": (400, 400),
        "thumb-256": (256, 256),
        "thumb-128": (128, 128),
        "thumb-64": (64, 64),
    }
    for variant in result.variants:
        assert decoded(variant.data).size == (variant.width, variant.height)


def test_thumbnail_size_names_the_thumb_and_extra_sizes_are_configurable() -> None:
    options = PipelineOptions(thumbnail_size=300, thumbnail_sizes=(96, 400))
    result = process_image(jpeg_with_metadata((800, 600)), options)
    assert [(v.name, v.width) for v in result.variants] == [
        ("original", 800),
        ("thumb-400", 400),
        ("thumb", 300),
        ("thumb-96", 96),
    ]


def test_original_is_capped_and_the_cap_can_be_lifted() -> None:
    data = encode(Image.new("RGB", (3000, 1000), (5, 100, 200)), "PNG")
    assert decoded(process_image(data).variant("original").data).size == (2048, 683)
    full = process_image(data, PipelineOptions(original_max_side=0)).variant("original")
    assert (full.width, full.height) == (3000, 1000)
    small = process_image(data, PipelineOptions(original_max_side=500)).variant("original")
    assert (small.width, small.height) == (500, 167)
    assert small.data  # a cap below the thumbnail size still gives full-size thumbnails
    thumb = process_image(data, PipelineOptions(original_max_side=300)).variant("thumb")
    assert (thumb.width, thumb.height) == (400, 400)


def test_small_images_are_never_upscaled_and_equal_squares_share_bytes() -> None:
    result = process_image(encode(Image.new("RGB", (100, 100), (9, 99, 199)), "PNG"))
    squares = [v for v in result.variants if v.name.startswith("thumb")]
    assert {(v.width, v.height) for v in squares} == {(64, 64), (100, 100)}
    assert result.variant("thumb").data == result.variant("thumb-128").data
    # A square original is its own 100 px square.
    assert result.variant("thumb").data == result.variant("original").data


def test_large_jpeg_is_draft_decoded_to_the_cap_and_matches_a_full_decode() -> None:
    image = Image.linear_gradient("L").resize((4032, 3024)).convert("RGB")
    image.paste((200, 30, 30), (1000, 800, 2000, 1600))
    data = encode(image, "JPEG", quality=92)
    original = process_image(data).variant("original")
    # 1/2 DCT scaling lands 1.6% under the 2048 px cap: kept, not decoded in full.
    assert (original.width, original.height) == (2016, 1512)
    reference = image.resize((2016, 1512), Image.Resampling.LANCZOS)
    assert mean_error(decoded(original.data).convert("RGB"), reference) < 3


def test_jpeg_just_over_the_cap_is_decoded_in_full_and_resampled_exactly() -> None:
    data = encode(Image.new("RGB", (2100, 1000), (30, 60, 90)), "JPEG")
    original = process_image(data).variant("original")
    assert (original.width, original.height) == (2048, 975)


def mean_error(a: Image.Image, b: Image.Image) -> float:
    from PIL import ImageChops, ImageStat

    assert a.size == b.size, (a.size, b.size)
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / len(a.getbands())


# Crop -------------------------------------------------------------------------------------------


def test_crop_replaces_the_centre_crop() -> None:
    from app.imaging.pipeline import CropBox

    image = Image.new("RGB", (600, 400), (0, 0, 255))
    image.paste((255, 0, 0), (20, 30, 220, 230))  # a red square away from the centre
    result = process_image(encode(image, "PNG"), crop=CropBox(20, 30, 200, 200))
    original = decoded(result.variant("original").data).convert("RGB")
    thumb = decoded(result.variant("thumb").data).convert("RGB")
    assert original.size == (200, 200) and thumb.size == (200, 200)
    for out in (original, thumb):
        assert mean_error(out, Image.new("RGB", out.size, (255, 0, 0))) < 4


def test_crop_is_in_upright_pixels_and_a_wide_crop_thumbs_its_centre() -> None:
    from app.imaging.pipeline import CropBox

    # Upright 60x40: green block at (0,0)-(15,10); stored rotated with orientation 6.
    data = marked_orientation_jpeg(6)
    result = process_image(data, crop=CropBox(0, 0, 15, 10))
    assert (result.width, result.height) == (15, 10)
    out = decoded(result.variant("original").data).convert("RGB")
    assert close(out.getpixel((7, 5)), (20, 200, 20))
    thumb = decoded(result.variant("thumb").data).convert("RGB")
    assert thumb.size == (10, 10)


def test_crop_with_a_draft_decode_maps_to_the_scaled_pixels() -> None:
    from app.imaging.pipeline import CropBox

    upright = Image.new("RGB", (3024, 4032), (0, 0, 0))
    upright.paste((240, 240, 0), (2000, 3000, 3000, 4000))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=92)
    result = process_image(data, crop=CropBox(2000, 3000, 1000, 1000))
    for variant in result.variants:
        out = decoded(variant.data).convert("RGB")
        assert mean_error(out, Image.new("RGB", out.size, (240, 240, 0))) < 6, variant.name


@pytest.mark.parametrize(
    "box", [(0, 0, 61, 40), (1, 0, 60, 40), (0, 0, 60, 41), (59, 39, 2, 2), (60, 0, 1, 1)]
)
def test_crop_outside_the_upright_image_is_invalid(box) -> None:
    from app.core.errors import InvalidCrop
    from app.imaging.pipeline import CropBox

    data = encode(Image.new("RGB", (60, 40)), "PNG")
    with pytest.raises(InvalidCrop):
        process_image(data, crop=CropBox(*box))


def test_crop_outside_the_stored_but_inside_the_upright_image_is_valid() -> None:
    from app.imaging.pipeline import CropBox

    data = marked_orientation_jpeg(6)  # stored 40x60, upright 60x40
    assert process_image(data, crop=CropBox(0, 0, 60, 40)).width == 60


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1,2,3",
        "1,2,3,4,5",
        "a,b,c,d",
        "-1,0,10,10",
        "0,0,0,10",
        "1.5,0,10,10",
        "²,0,1,1",
        "0,0,10," + "9" * 80,
    ],
)
def test_malformed_crop_text_is_invalid(text: str) -> None:
    from app.core.errors import InvalidCrop
    from app.imaging.pipeline import parse_crop

    with pytest.raises(InvalidCrop):
        parse_crop(text)


def test_crop_text_is_parsed() -> None:
    from app.imaging.pipeline import CropBox, parse_crop

    assert parse_crop(" 10, 20,30 ,40") == CropBox(10, 20, 30, 40)


# Metadata report --------------------------------------------------------------------------------


def iptc_jpeg(marker: bytes) -> bytes:
    """A JPEG with an APP13 Photoshop block holding IPTC (resource 0x0404)."""
    iptc = b"\x1c\x02\x78" + struct.pack(">H", len(marker)) + marker  # 2:120 caption
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc))
    resource += iptc + (b"\x00" if len(iptc) % 2 else b"")
    body = b"Photoshop 3.0\x00" + resource
    segment = b"\xff\xed" + struct.pack(">H", len(body) + 2) + body
    jpeg = encode(Image.new("RGB", (32, 32), (1, 2, 3)), "JPEG")
    return jpeg[:2] + segment + jpeg[2:]


def test_report_names_what_was_removed_and_the_outputs_hold_none_of_it() -> None:
    data = jpeg_with_metadata(orientation=6)
    result = process_image(data)
    assert result.orientation == 6
    assert set(result.metadata_removed) == {
        "exif.gps",
        "exif.camera",
        "xmp",
        "comment",
    }
    markers = (b"SecretCameraMaker", b"SecretModel", b"secret-xmp", b"secret-comment")
    for variant in result.variants:
        assert_clean_webp(variant.data, markers=markers)


def test_report_lists_iptc_and_datetime_and_other_exif() -> None:
    data = iptc_jpeg(b"secret-iptc-caption")
    assert "iptc" in process_image(data).metadata_removed
    exif = Image.Exif()
    exif[0x0132] = "2020:01:01 00:00:00"
    exif[0x0131] = "SomeEditor"  # Software
    data = encode(Image.new("RGB", (16, 16)), "JPEG", exif=exif)
    assert set(process_image(data).metadata_removed) == {"exif.datetime", "exif.other"}
    for variant in process_image(iptc_jpeg(b"secret-iptc-caption")).variants:
        assert_clean_webp(variant.data, markers=(b"secret-iptc-caption",))


def test_report_says_icc_converted_for_a_usable_profile_and_dropped_for_a_broken_one() -> None:
    from tests.images import srgb_profile_bytes

    image = Image.new("RGB", (16, 16), (10, 200, 10))
    tagged = process_image(encode(image, "PNG", icc_profile=srgb_profile_bytes()))
    assert tagged.metadata_removed == ("icc->srgb",)
    broken = process_image(encode(image, "PNG", icc_profile=b"not a profile"))
    assert broken.metadata_removed == ("icc",)
    for variant in (*tagged.variants, *broken.variants):
        assert_clean_webp(variant.data)


def test_report_lists_png_text_chunks_as_comments() -> None:
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "secret-author")
    text.add_text("Raw", "secret-ztxt", zip=True)
    result = process_image(encode(Image.new("RGB", (8, 8)), "PNG", pnginfo=text))
    assert result.metadata_removed == ("comment",)
    for variant in result.variants:
        assert_clean_webp(variant.data, markers=(b"secret-author",))


def test_clean_image_reports_nothing() -> None:
    result = process_image(encode(Image.new("RGB", (8, 8)), "PNG"))
    assert result.metadata_removed == ()
    assert result.orientation == 1


# Hostile input: every decoder failure is the pipeline's own error --------------------------------


@pytest.mark.parametrize(
    "error",
    [
        OSError("x"),
        ValueError("x"),
        struct.error("x"),
        IndexError("x"),
        TypeError("x"),
        SyntaxError("x"),
        EOFError("x"),
        KeyError("x"),
        MemoryError(),
    ],
)
@pytest.mark.parametrize("stage", ["open", "load"])
def test_any_decoder_exception_becomes_corrupt_image(monkeypatch, error, stage) -> None:
    from PIL import ImageFile

    def fail(*_args, **_kwargs):
        raise error

    if stage == "open":
        monkeypatch.setattr(Image, "open", fail)
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(CorruptImage):
        process_image(encode(Image.new("RGB", (8, 8)), "PNG"))


def test_outputs_are_the_same_when_made_in_parallel_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    inputs = [jpeg_with_metadata((300 + 10 * i, 200), orientation=1 + i % 8) for i in range(8)]
    expected = [process_image(data).variants for data in inputs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda d: process_image(d).variants, inputs)) == expected
