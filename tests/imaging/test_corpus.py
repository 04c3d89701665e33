"""The pipeline on the shared corpus's real files, checked pixel by pixel against independent
references (Pillow's own transposes and LittleCMS conversions of the source), not only sizes.

The corpus's expected classes through HTTP are in tests/api/test_corpus.py; here are the
pipeline's outputs themselves, and the HEIC/HEIF/AVIF rows with those inputs switched on.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageCms, ImageOps, ImageStat

from app.core.errors import ImageError
from app.imaging.pipeline import ALL_FORMATS, PipelineOptions, ProcessedImage, process_image
from tests.conftest import corpus_rows
from tests.images import assert_clean_webp

pytestmark = pytest.mark.corpus

EVERY_FORMAT = PipelineOptions(formats=ALL_FORMATS)


def run(corpus: Path, name: str, options: PipelineOptions | None = None) -> ProcessedImage:
    return process_image((corpus / name).read_bytes(), options)


def picture(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGBA")


def mean_error(a: Image.Image, b: Image.Image, mask: Image.Image | None = None) -> float:
    """Mean absolute difference per RGB channel, 0-255, where ``mask`` is non-zero."""
    assert a.size == b.size, (a.size, b.size)
    stat = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB")), mask)
    return sum(stat.mean) / 3


def source(corpus: Path, name: str) -> Image.Image:
    image = Image.open(io.BytesIO((corpus / name).read_bytes()))
    image.load()
    return image


# Orientation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["Landscape", "Portrait"])
@pytest.mark.parametrize("orientation", range(9))
def test_orientation_examples_come_out_as_the_upright_one(corpus, shape, orientation) -> None:
    """Each of these files shows the same picture once its orientation (0-8) is applied."""
    upright = picture(
        run(corpus, f"exif-orientation-examples/{shape}_1.jpg").variant("original").data
    )
    result = run(corpus, f"exif-orientation-examples/{shape}_{orientation}.jpg")
    assert result.orientation == max(orientation, 1)
    out = picture(result.variant("original").data)
    assert mean_error(out, upright) < 6
    # The comparison can tell: the mirror image is far off.
    assert mean_error(out, upright.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) > 30


@pytest.mark.parametrize(
    "name",
    [
        *[f"imgproxy-testdata/orientation-{n}.png" for n in range(9)],  # PNG eXIf chunks
        *[
            f"pillow-tests/hopper_orientation_{n}.{ext}"
            for n in range(2, 9)
            for ext in ("jpg", "webp")
        ],
        "exif-samples/jpg/orientation/landscape_6.jpg",
        "exif-samples/jpg/orientation/portrait_8.jpg",
        "pillow-tests/exif_imagemagick_orientation.png",  # in ImageMagick's PNG text profile
        "pillow-tests/orientation_rectangle.jpg",
        "pillow-tests/empty_gps_ifd.jpg",
        "exiftool-t-images/MWG.jpg",
        "exiftool-t-images/Pentax.jpg",
        "exif-samples/jpg/hdr/canon_hdr_YES.jpg",
        "thumbor-fixtures/Giunchedi_2C_Filippo_January_2015_01-cmyk-orientation-exif.jpg",
        *[f"libvips-testsuite/rotation/{n}.jpg" for n in range(1, 9)],  # progressive, ICC
    ],
)
def test_orientation_matches_pillows_exif_transpose(corpus, name: str) -> None:
    src = source(corpus, name)
    reference = in_srgb(src, ImageOps.exif_transpose(src))
    out = picture(run(corpus, name).variant("original").data)
    mask = reference.getchannel("A").point(lambda v: 255 if v else 0)
    error = mean_error(out, reference, mask)
    assert error < 6
    assert mean_error(out.getchannel("A"), reference.getchannel("A")) < 1
    if min(reference.size) >= 16:  # the comparison can tell a wrong turn from WebP's loss
        assert mean_error(out, reference.transpose(Image.Transpose.ROTATE_180), mask) > 2 * error


def in_srgb(src: Image.Image, image: Image.Image) -> Image.Image:
    """``image`` (``src`` or made from it) as RGBA, through ``src``'s ICC profile to sRGB."""
    if "icc_profile" in src.info:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(src.info["icc_profile"]))
        srgb = ImageCms.createProfile("sRGB")
        mode = "CMYK" if image.mode == "CMYK" else "RGB"
        converted = ImageCms.profileToProfile(image.convert(mode), profile, srgb, outputMode="RGB")
        if "A" in image.getbands():
            converted.putalpha(image.getchannel("A"))
        image = converted
    return image.convert("RGBA")


def test_orientation_kept_only_in_xmp_is_ignored_as_browsers_do(corpus) -> None:
    """Pillow's ``exif_transpose`` turns this file by its XMP ``tiff:Orientation`` (3); browsers
    show it as stored, and so does the avatar."""
    name = "pillow-tests/xmp_tags_orientation.png"
    src = source(corpus, name)
    result = run(corpus, name)
    assert result.orientation == 1
    out = picture(result.variant("original").data)
    stored = in_srgb(src, src)
    mask = stored.getchannel("A").point(lambda v: 255 if v else 0)
    assert mean_error(out, stored, mask) < 6
    assert mean_error(out, in_srgb(src, ImageOps.exif_transpose(src)), mask) > 12


def test_camera_photo_orientation_six_is_turned_upright(corpus) -> None:
    result = run(corpus, "exif-samples/jpg/orientation/landscape_6.jpg")
    assert result.orientation == 6
    assert (result.width, result.height) == (600, 450)


# Colour: ICC, CMYK, 16-bit, palette, transparency, 1-bit ----------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "pillow-tests/xmp_test.jpg",  # Adobe RGB (1998)
        "libvips-testsuite/sample.jpg",  # A98
        "thumbor-fixtures/cmyk-icc.jpg",  # CMYK, U.S. Web Coated (SWOP)
        "thumbor-fixtures/grayscale-icc.jpg",  # grey, Dot Gain 20%
        "pillow-tests/icc_profile_big.jpg",
        "exif-samples/jpg/orientation/portrait_8.jpg",
    ],
)
def test_tagged_photos_are_converted_to_srgb(corpus, name: str) -> None:
    src = ImageOps.exif_transpose(source(corpus, name))
    profile = ImageCms.ImageCmsProfile(io.BytesIO(src.info["icc_profile"]))
    srgb = ImageCms.createProfile("sRGB")
    mode = "RGB" if src.mode in ("RGB", "RGBA") else src.mode
    reference = ImageCms.profileToProfile(src.convert(mode), profile, srgb, outputMode="RGB")
    result = run(corpus, name)
    assert "icc->srgb" in result.metadata_removed
    out = picture(result.variant("original").data)
    reference = reference.resize(out.size, Image.Resampling.LANCZOS)
    assert mean_error(out, reference) < 4
    if mean_error(src.convert("RGB").resize(out.size), reference) > 4:
        assert mean_error(out, reference) < mean_error(out, src.convert("RGB").resize(out.size))


def test_untagged_cmyk_is_inverted_and_converted(corpus) -> None:
    src = source(corpus, "pillow-tests/pil_sample_cmyk.jpg")
    assert src.mode == "CMYK" and "icc_profile" not in src.info
    out = picture(run(corpus, "pillow-tests/pil_sample_cmyk.jpg").variant("original").data)
    assert mean_error(out, src.convert("RGB")) < 4


def reference_rgba(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I"):  # 16-bit grey, scaled to 8 bits
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return image.convert("RGBA")


@pytest.mark.parametrize(
    "name",
    [
        "basn0g01",  # 1-bit grey
        "basn0g02",
        "basn0g08",
        "basn0g16",  # 16-bit grey
        "basn2c16",  # 16-bit RGB
        "basn3p01",  # palettes of 2 to 256 colours
        "basn3p02",
        "basn3p04",
        "basn3p08",
        "basn4a08",  # grey + alpha
        "basn4a16",
        "basn6a08",  # RGBA
        "basn6a16",  # 16-bit RGBA
        "basi0g16",  # interlaced
        "basi6a16",
        "tbbn3p08",  # palette with tRNS
        "tbrn2c08",  # RGB colour key
        "tbwn0g16",  # 16-bit grey colour key
        "tp1n3p08",
        "tm3n3p02",  # palette with partial alpha
    ],
)
def test_pngsuite_pixels_and_alpha_come_through(corpus, name: str) -> None:
    """Small drawings are stored exactly (lossless), so every pixel must match."""
    reference = reference_rgba(source(corpus, f"pngsuite/{name}.png"))
    out = picture(run(corpus, f"pngsuite/{name}.png").variant("original").data)
    alpha = reference.getchannel("A")
    assert mean_error(out.getchannel("A"), alpha) == 0
    assert mean_error(out, reference, alpha.point(lambda v: 255 if v else 0)) < 0.5


@pytest.mark.parametrize(
    "name",
    [
        "pillow-tests/transparent.png",
        "pillow-tests/transparent.gif",
        "pillow-tests/transparent.webp",
        "pillow-tests/hopper.gif",
        "libvips-testsuite/trans-x.gif",
    ],
)
def test_transparent_and_palette_pictures_keep_their_look(corpus, name: str) -> None:
    reference = source(corpus, name).convert("RGBA")
    out = picture(run(corpus, name).variant("original").data)
    alpha = reference.getchannel("A")
    assert mean_error(out.getchannel("A"), alpha) < 1
    assert mean_error(out, reference, alpha.point(lambda v: 255 if v > 128 else 0)) < 6


# Metadata ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("exif-samples/jpg/gps/DSCN0010.jpg", {"exif.gps", "exif.camera", "xmp"}),
        (
            "exif-samples/jpg/Canon_40D.jpg",
            {"exif.gps", "exif.camera", "exif.thumbnail", "icc->srgb"},
        ),
        ("exiftool-t-images/IPTC.jpg", {"iptc"}),
        ("exiftool-t-images/XMP.jpg", {"xmp"}),
        ("pillow-tests/iptc.jpg", {"iptc"}),
        ("pillow-tests/exif_gps.jpg", {"exif.gps"}),
        ("pillow-tests/hopper.jpg", {"comment"}),
        ("pillow-tests/itxt_chunks.png", {"comment"}),
    ],
)
def test_metadata_report_and_clean_outputs(corpus, name: str, expected: set[str]) -> None:
    data = (corpus / name).read_bytes()
    result = process_image(data)
    assert expected <= set(result.metadata_removed), result.metadata_removed
    src = source(corpus, name)
    markers = []
    exif = src.getexif()
    for tag in (0x010F, 0x0110):  # make and model, as stored
        value = exif.get(tag)
        if isinstance(value, str) and len(value.strip("\0 ")) >= 4:
            markers.append(value.strip("\0 ").encode())
    for variant in result.variants:
        assert_clean_webp(variant.data, markers=tuple(markers))


# Animation --------------------------------------------------------------------------------------


def pillow_frames(path: Path) -> tuple[int, list[int]]:
    with Image.open(path) as image:
        durations = []
        for index in range(image.n_frames):
            image.seek(index)
            image.load()
            durations.append(image.info.get("duration") or 0)
        return image.n_frames, durations


@pytest.mark.parametrize(
    "name",
    [
        "pillow-tests/iss634.gif",
        "pillow-tests/iss634.apng",
        "pillow-tests/iss634.webp",
        "thumbor-fixtures/Rotating_earth__large_.gif",
        "libvips-testsuite/big-height.webp",
        "pillow-tests/chi.gif",
    ],
)
def test_corpus_animations_keep_every_frame_and_duration(corpus, name: str) -> None:
    count, durations = pillow_frames(corpus / name)
    if name.endswith(".gif"):
        durations = [d if d > 10 else 100 for d in durations]
    result = run(corpus, name)
    assert result.frames == count
    # The WebP encoder merges a frame identical to the one before into it (adding up their
    # durations): the animation plays the same, in as many or fewer frames.
    with Image.open(io.BytesIO(result.variant("original").data)) as out:
        assert 1 < out.n_frames <= count
        total = 0
        for index in range(out.n_frames):
            out.seek(index)
            out.load()
            total += out.info["duration"]
    assert total == sum(int(d) for d in durations)
    assert result.variant("still").frames == 1


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("libvips-testsuite/invalid_multiframe.gif", 3),  # the 4th frame is broken
        ("pillow-tests/decompression_bomb_extents.gif", 1),  # frame 2 would be 4 gigapixels
        ("pillow-tests/sugarshack.mpo", 1),  # a stereo pair, not an animation
    ],
)
def test_corpus_animations_with_a_bad_frame_keep_what_plays(corpus, name: str, frames: int) -> None:
    assert run(corpus, name).frames == frames


# HEIC, HEIF and AVIF switched on ----------------------------------------------------------------

# These two stay rejected with the inputs on: 289 megapixels, and a 623-byte ExifTool stub that
# declares 1596x1064 but carries no image data (the corpus README counts it as accepted).
ISO_REJECTED = {
    "libvips-testsuite/17000x17000.avif": 422,
    "exiftool-t-images/QuickTime.heic": 422,
}
ISO_ROWS = [row for row in corpus_rows() if "ISO Media" in row["description"]]


@pytest.mark.parametrize("row", ISO_ROWS, ids=[row["file"] for row in ISO_ROWS])
def test_heic_heif_avif_rows_with_those_inputs_on(corpus, row: dict) -> None:
    data = (corpus / row["file"]).read_bytes()
    expected = ISO_REJECTED.get(row["file"], 201)
    try:
        result = process_image(data, EVERY_FORMAT)
    except ImageError as exc:
        assert exc.status == expected, (row["file"], exc.code)
        return
    assert expected == 201, row["file"]
    for variant in result.variants:
        assert_clean_webp(variant.data)


def test_iso_rows_are_found(corpus) -> None:
    assert len(ISO_ROWS) >= 10


def test_iphone_heic_is_upright_and_its_colours_converted(corpus) -> None:
    name = "exif-samples/heic/IMG_5195.HEIC"
    result = run(corpus, name, EVERY_FORMAT)
    assert (result.width, result.height) == (1586, 2048)  # portrait, as it was shot
    assert {"exif.gps", "exif.camera", "xmp", "icc->srgb"} <= set(result.metadata_removed)


def test_avif_orientation_sample_is_upright(corpus) -> None:
    result = run(corpus, "libvips-testsuite/avif-orientation-6.avif", EVERY_FORMAT)
    assert (result.width, result.height) == (1536, 2048)
