"""The image pipeline: untrusted bytes in, sanitised WebP variants out.

Pure: no I/O besides memory, no HTTP, no database. ``process_image`` runs these steps in this
fixed order; every one treats the input as hostile:

1. ``sniff``        type by content (magic bytes), never by name; checked against the allow-list
   ``check_structure`` the container walked without decoding: a JPEG's scans and segments, a
                    PNG's chunks, a GIF's blocks and every GIF frame's extent; far more than any
                    real picture has is ``ImageTooComplex`` (each costs a decoder pass or a step
                    of Python)
2. ``open_image``   Pillow opened with only that format allowed; header parsed, no pixels yet
3. ``check_size``   width x height, each side, and for animations frames x width x height,
                    from the headers, before any pixel is decoded; a GIF frame that reaches
                    past the logical screen (decoders would grow the canvas for it, to any
                    size) ends the animation before it, undecoded
4. ``decode``       the first frame; a JPEG larger than every output is decoded DCT-scaled
                    (``draft``); any decoder exception becomes ``CorruptImage``
5. ``inspect``      after ``load()``: the EXIF orientation (never XMP's, which browsers ignore),
                    and the report of what is removed
6. ``orient``       EXIF orientation applied by transposing pixels
7. ``to_srgb``      embedded ICC profile converted to sRGB; 16-bit, palette, grey -> 8-bit RGB(A);
                    the image leaves with an empty ``info``: nothing read from the file survives
8. ``fit``          the crop box (or the whole picture) -> the original, capped; its centre
                    square -> the thumbnails, each made from the one before, never upscaled.
                    Without a crop box the square is proposed (``app.imaging.autocrop``: the
                    face, else the content, else the centre) and the original stays whole
9. ``encode``       WebP from pixels alone: no EXIF, XMP, ICC or comment can reach the encoder

An animated GIF, WebP, PNG or AVIF repeats steps 6-8 for each frame and is encoded as an
animated WebP (durations and loop count kept), plus a ``still`` of its first frame. A frame that
cannot be decoded ends the animation there; a broken first frame is a ``CorruptImage``.

Later, on request, ``derive_square`` makes one more square (a rendition: AVIF, WebP, JPEG or
PNG, of a ladder side) from the stored original, cut from the avatar's crop; ``encode_as``
writes any format from pixels alone, as step 9 does.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple, TypedDict

import pillow_heif
from PIL import ExifTags, Image, ImageCms, ImageFile

from app.core import config
from app.core.config import (
    DEFAULT_AUTO_CROP,
    DEFAULT_MAX_DIMENSION,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_ORIGINAL_MAX_SIDE,
    DEFAULT_THUMBNAIL_SIZE,
    DEFAULT_THUMBNAIL_SIZES,
)
from app.core.errors import (
    CorruptImage,
    DimensionsTooLarge,
    ImageTooComplex,
    InvalidCrop,
    TooManyFrames,
    TooManyPixels,
    UnsupportedFormat,
)
from app.core.variants import (
    ANIMATED_TYPES,
    AVIF,
    JPEG,
    PNG,
    WEBP,
    rendition_name,
    square_name,
)
from app.imaging.autocrop import AutoCrop, CropSource, propose_square
from app.imaging.placeholder import Placeholder, make_placeholder

# A truncated file is corrupt, never "the pixels we managed to read".
ImageFile.LOAD_TRUNCATED_IMAGES = False
# HEIC/HEIF through libheif. Registering only makes Pillow able to open it: ``open_image`` asks
# for the one format ``sniff`` found, and only when it is allow-listed. Embedded thumbnails,
# depth maps and auxiliary images are never read.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

WEBP_CONTENT_TYPE = WEBP
# libwebp cannot encode a side longer than this.
WEBP_MAX_SIDE = 16383

ALL_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "HEIF", "AVIF"})
# What the service takes unless configured otherwise (the corpus classes assume these four).
DEFAULT_FORMATS = frozenset(config.DEFAULT_FORMATS)
_FORMAT_NAMES = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "GIF": "GIF",
    "WEBP": "WebP",
    "HEIF": "HEIC/HEIF",
    "AVIF": "AVIF",
}
# Formats whose extra frames are an animation (an MPO's second frame is a stereo view, a HEIF's
# further images are a burst: both keep their first image only).
ANIMATED_FORMATS = frozenset({"GIF", "WEBP", "PNG", "AVIF"})

# JPEG draft decoding: a DCT-scaled decode that lands at most this fraction under the original's
# size cap is kept at that size. A 4032 px photo is decoded at half scale and stored at 2016 px
# (35 ms) instead of decoded in full and resampled to 2048 px (330 ms): 1.6% fewer pixels a side.
DRAFT_SLACK = 1 / 16
# Animated WebP: method 2 with minimize_size (benchmarks/pipeline.py --wins): half the time of
# method 4 for 6% more bytes; method 6 takes seconds a clip.
ANIMATION_METHOD = 2
# Drawings (pictures of at most DRAWING_COLOURS colours, or of at most DRAWING_PIXELS pixels:
# icons, pixel art, logos) also get a lossless encode of each still variant up to
# LOSSLESS_MAX_PIXELS, kept when it costs at most EXACT_BUDGET bytes more than the lossy one.
# Lossy WebP halves colour resolution, which smears their flat colours and hard edges. Photos
# never pay for the second encode. Lossless effort 50, method 2: measured within 5% of the
# bytes of effort 80, method 4, at a fifth of the time.
DRAWING_COLOURS = 256
DRAWING_PIXELS = 128 * 128
LOSSLESS_MAX_PIXELS = 1024 * 1024
LOSSLESS_EFFORT, LOSSLESS_METHOD = 50, 2
EXACT_BUDGET = 4096
# Decoding work bounds, far above what real files have (the shared test corpus of 643 files: at
# most 11 scans and 32 segments in a JPEG). Each progressive scan is a pass of the decoder over
# the whole image, even one of a few bytes; every segment, chunk or sub-block is a step of Python
# in Pillow's parsers. libjpeg writes 10 scans, mozjpeg about a dozen.
MAX_JPEG_SCANS = 100
MAX_JPEG_SEGMENTS = 1000
# PNG chunks and GIF sub-blocks: real encoders write kilobytes a chunk (PNG) and 255 bytes a
# sub-block (GIF); a file of empty chunks or 1-byte sub-blocks has one every few bytes.
BLOCKS_BASE = 4096
BYTES_PER_BLOCK = 64

# resize() first shrinks by an integer factor with reduce() until the image is within this
# factor of the target, then resamples with Lanczos: same look, a fraction of the work.
REDUCING_GAP = 3.0

_MAGIC: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda b: b.startswith(b"\xff\xd8\xff"), "JPEG"),
    (lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), "PNG"),
    (lambda b: b[:6] in (b"GIF87a", b"GIF89a"), "GIF"),
    (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", "WEBP"),
)
# ISO base media file brands (the ``ftyp`` box) of AVIF and of HEVC-coded HEIF.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
# x,y,width,height: ASCII digits only (str.isdigit() also takes "²"), at most 7 of them.
_CROP = re.compile(r"\s*(\d{1,7})\s*,\s*(\d{1,7})\s*,\s*(\d{1,7})\s*,\s*(\d{1,7})\s*", re.ASCII)
# An image spatial extents property: size 20, "ispe", version + flags, width, height.
_ISPE = re.compile(rb"\x00\x00\x00\x14ispe.{4}(.{4})(.{4})", re.DOTALL)

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose,
# which we do not use because it carries the EXIF block, GPS included, onto its result).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
# Tags that identify the camera or its owner (IFD0 and the Exif IFD).
_CAMERA_TAGS = frozenset(
    {
        0x010F,  # Make
        0x0110,  # Model
        0x927C,  # MakerNote
        0xA430,  # CameraOwnerName
        0xA431,  # BodySerialNumber
        0xA433,  # LensMake
        0xA434,  # LensModel
        0xA435,  # LensSerialNumber
    }
)
_DATETIME_TAGS = frozenset({0x0132, 0x9003, 0x9004})  # DateTime, DateTimeOriginal, -Digitized
# Pointers to other IFDs, and the orientation (reported as ``orientation_applied``).
_STRUCTURE_TAGS = frozenset({_EXIF_ORIENTATION_TAG, 0x8769, 0x8825, 0xA005})

_PNG_XMP = "XML:com.adobe.xmp"
# A JPEG marker in entropy-coded data: 0xFF followed by neither a stuffed zero, a restart marker
# nor a fill byte.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7: no length
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


class CropBox(NamedTuple):
    """A region of the upright image, in its pixels."""

    x: int
    y: int
    width: int
    height: int


class WebpSettings(TypedDict):
    """The keywords ``encode`` takes for one kind of variant."""

    quality: int
    method: int


@dataclass(frozen=True)
class PipelineOptions:
    # The defaults are the settings' (app.core.config), so a pipeline made with none behaves
    # as the service does.
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_dimension: int = DEFAULT_MAX_DIMENSION
    max_frames: int = DEFAULT_MAX_FRAMES
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE  # the main square, "thumb"
    thumbnail_sizes: tuple[int, ...] = DEFAULT_THUMBNAIL_SIZES  # more squares, "thumb-<side>"
    original_max_side: int = DEFAULT_ORIGINAL_MAX_SIDE
    formats: frozenset[str] = DEFAULT_FORMATS
    original_quality: int = 85
    thumbnail_quality: int = 80
    # WebP methods, chosen by measurement (benchmarks/pipeline.py --wins; table in the README):
    # the original is made once and seldom downloaded: method 2 encodes it 2.3x faster than 4
    # for 3% more bytes. The squares are small to encode and downloaded by every avatar list:
    # method 6 makes them 5% smaller for a few milliseconds.
    original_method: int = 2
    square_method: int = 6
    # Without a client crop: how the square is chosen (face, else content, else centre).
    auto_crop: AutoCrop = DEFAULT_AUTO_CROP
    # Renditions (``derive_square``), chosen by measurement (benchmarks/formats.py; the README
    # has the table): libaom tuned for SSIM at quality 62 makes the 256 and 400 px squares
    # smaller than today's WebP ones at an equal or better SSIM, every one; speed 4 would save
    # 4% more bytes for five times the encode. JPEG is e-mail-safe: baseline, 4:2:0,
    # transparency flattened on ``jpeg_background``.
    avif_quality: int = 62
    avif_speed: int = 6
    avif_tune: str = "ssim"
    jpeg_quality: int = 85
    jpeg_background: tuple[int, int, int] = (255, 255, 255)

    def squares(self) -> tuple[tuple[str, int], ...]:
        """(variant name, side) of every thumbnail, largest first."""
        sides = sorted({self.thumbnail_size, *self.thumbnail_sizes}, reverse=True)
        return tuple((square_name(side, main_side=self.thumbnail_size), side) for side in sides)

    @property
    def original_webp(self) -> WebpSettings:
        return WebpSettings(quality=self.original_quality, method=self.original_method)

    @property
    def square_webp(self) -> WebpSettings:
        """Every square's: made at upload (the still too) or derived later."""
        return WebpSettings(quality=self.thumbnail_quality, method=self.square_method)


@dataclass(frozen=True)
class Variant:
    name: str
    data: bytes
    width: int
    height: int
    content_type: str = WEBP_CONTENT_TYPE
    frames: int = 1


@dataclass(frozen=True)
class ProcessedImage:
    source_format: str
    width: int
    height: int
    orientation: int
    variants: tuple[Variant, ...] = field(default_factory=tuple)
    # What the input carried and the outputs do not, e.g. ("exif.gps", "xmp", "icc->srgb").
    metadata_removed: tuple[str, ...] = ()
    frames: int = 1
    # BlurHash and dominant colour of the (first frame's) smallest square.
    placeholder: Placeholder | None = None
    # The box the squares were cut from, in pixels of the original variant, and what chose it.
    crop: CropBox | None = None
    crop_source: CropSource | None = None

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


def process_image(
    data: bytes, options: PipelineOptions | None = None, *, crop: CropBox | None = None
) -> ProcessedImage:
    """Validate and sanitise ``data``; return the WebP variants.

    ``original`` (the crop box or the whole picture, capped), ``thumb`` and ``thumb-<size>``
    (squares), and for animations ``still`` (the first frame of ``thumb``).
    Raises only ``app.core.errors.ImageError`` subclasses for bad input.
    """
    options = options or PipelineOptions()
    source_format = sniff(data, options.formats)
    check_declared_sizes(data, source_format, options)
    gif = check_structure(data, source_format, options)
    image = open_image(data, source_format)
    full_size = image.size
    check_size(full_size, options)
    frame_count = count_frames(image, gif, options)

    draft(image, crop, options)
    decode(image)
    orientation, removed = inspect(image)
    # libheif turns HEIF pixels upright itself (the size Pillow reports is already upright).
    transpose = 1 if source_format == "HEIF" else orientation
    animated = frame_count > 1
    durations, loop = [frame_duration(image)], loop_count(image)

    first = to_srgb(orient(_own(image, animated), transpose), removed)
    focus, crop_source = choose_square(first, full_size, transpose, crop, options)
    layout = plan(full_size, transpose, first.size, crop, options, focus=focus)
    rendered = [fit(first, layout)]
    if animated:
        for frame in later_frames(image, frame_count):
            durations.append(frame_duration(frame))
            removed |= inspect_text(frame)
            rendered.append(fit(to_srgb(orient(_own(frame, True), transpose), removed), layout))

    variants = encode_all(rendered, durations, loop, layout, options, drawing=is_drawing(first))
    original = variants[0]
    return ProcessedImage(
        source_format=source_format,
        width=original.width,
        height=original.height,
        orientation=orientation,
        variants=variants,
        metadata_removed=tuple(sorted(removed)),
        frames=len(rendered),
        placeholder=make_placeholder(rendered[0].squares[-1]),
        crop=layout.focus_in_original,
        crop_source=crop_source,
    )


def configure_pillow(max_pixels: int) -> None:
    """Make Pillow itself refuse what ``check_size`` refuses: its pixel limit (a process-wide
    global, set once per process where the settings are applied: in each image worker and in
    the server) becomes ``max_pixels``, and its warning above that limit an error (by default
    it only warns up to twice its limit). ``check_size`` refuses first, from the headers and
    for every frame; this is the second line, for any size Pillow meets while decoding."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


# 1. sniff ---------------------------------------------------------------------------------------


def sniff(data: bytes, allowed: frozenset[str] = ALL_FORMATS) -> str:
    head = data[:64]
    found = next((name for matches, name in _MAGIC if matches(head)), None) or _sniff_isobmff(head)
    if found is None or found not in allowed:
        names = ", ".join(_FORMAT_NAMES[name] for name in sorted(allowed))
        raise UnsupportedFormat(f"The file is not an accepted image type ({names}).")
    return found


def _sniff_isobmff(head: bytes) -> str | None:
    """AVIF or HEIF by the brands of a leading ``ftyp`` box."""
    if head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    end = min(max(size, 16), len(head))
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return None


def check_declared_sizes(data: bytes, source_format: str, options: PipelineOptions) -> None:
    """HEIF and AVIF decoders parse a whole container on open: check its declared image
    extents (``ispe``) first, so an oversized image is refused as such."""
    if source_format not in ("HEIF", "AVIF"):
        return
    for match in _ISPE.finditer(data):
        check_size(
            (int.from_bytes(match.group(1), "big"), int.from_bytes(match.group(2), "big")),
            options,
        )


class GifLayout(NamedTuple):
    """Image descriptors counted (at most one past the limit), and how many of them, from the
    first, lie inside the logical screen. Decoders grow the canvas to hold a frame that reaches
    past it: a 16x16 screen with a 12000x12000 frame would cost gigabytes."""

    frames: int
    inside_screen: int


def check_structure(data: bytes, source_format: str, options: PipelineOptions) -> GifLayout | None:
    """Walk the container without decoding, and refuse more decoding work than any real
    picture needs (``ImageTooComplex``). Returns a GIF's frames and canvas."""
    budget = BLOCKS_BASE + len(data) // BYTES_PER_BLOCK
    if source_format == "JPEG":
        check_jpeg_scans(data)
    elif source_format == "PNG":
        if png_chunk_count(data, limit=budget) > budget:
            raise ImageTooComplex("The PNG is made of too many chunks.")
    elif source_format == "GIF":
        layout, blocks = gif_layout(data, limit=options.max_frames, blocks=budget)
        if blocks > budget:
            raise ImageTooComplex("The GIF is made of too many blocks.")
        return layout
    return None


def check_jpeg_scans(data: bytes) -> None:
    """Count the scans (SOS markers) and segments of the first picture, up to its EOI."""
    scans, segments = jpeg_scan_count(data, segment_limit=MAX_JPEG_SEGMENTS)
    if scans > MAX_JPEG_SCANS:
        raise ImageTooComplex(
            f"The JPEG has more than {MAX_JPEG_SCANS} scans; each is a pass over the image."
        )
    if segments > MAX_JPEG_SEGMENTS:
        raise ImageTooComplex(f"The JPEG has more than {MAX_JPEG_SEGMENTS} segments.")


def jpeg_scan_count(data: bytes, *, segment_limit: int) -> tuple[int, int]:
    """(scans, segments) of the first picture, stopping once past ``segment_limit`` segments.
    Entropy-coded data is skipped with one regular-expression search a scan, and garbage
    between segments as libjpeg skips it; anything malformed ends the walk quietly (the
    decoder has the last word)."""
    position, scans, segments, end = 2, 0, 0, len(data)
    while position + 4 <= end and segments <= segment_limit:
        if data[position] != 0xFF:
            found = _JPEG_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == _JPEG_EOI:
            break
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        segments += 1
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == _JPEG_SOS:
            scans += 1
            found = _JPEG_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
    return scans, segments


def png_chunk_count(data: bytes, *, limit: int) -> int:
    """Chunks of a PNG up to IEND, from their length fields; stops once past ``limit``."""
    position, chunks, end = 8, 0, len(data)
    while position + 8 <= end and chunks <= limit:
        chunks += 1
        if data[position + 4 : position + 8] == b"IEND":
            break
        position += 12 + int.from_bytes(data[position : position + 4], "big")
    return chunks


def gif_layout(data: bytes, *, limit: int, blocks: int) -> tuple[GifLayout, int]:
    """Image descriptors of a GIF and where they lie, read from its block structure without
    decoding, and the sub-blocks walked. Stops once past ``limit`` frames or past
    ``blocks`` sub-blocks. Ends quietly at anything malformed: the decoder has the last word."""
    if len(data) < 13:
        return GifLayout(1, 1), 0
    width, height = struct.unpack_from("<2H", data, 6)
    position = 13
    if data[10] & 0x80:  # global colour table
        position += 3 << ((data[10] & 7) + 1)
    frames = walked = 0
    inside: int | None = None
    end = len(data)
    while position < end and frames <= limit and walked <= blocks:
        block = data[position]
        position += 1
        if block == 0x2C:  # image descriptor: left, top, width, height, flags
            if position + 9 > end:
                break
            frames += 1
            left, top, w, h = struct.unpack_from("<4H", data, position)
            if inside is None and (left + w > width or top + h > height):
                inside = frames - 1
            flags = data[position + 8]
            position += 9
            if flags & 0x80:  # local colour table
                position += 3 << ((flags & 7) + 1)
            # after the LZW code size
            position, count = _skip_sub_blocks(data, position + 1, blocks - walked)
        elif block == 0x21:  # extension: label, then sub-blocks
            position, count = _skip_sub_blocks(data, position + 1, blocks - walked)
        else:  # trailer or garbage
            break
        walked += count
    return GifLayout(max(frames, 1), frames if inside is None else inside), walked


def _skip_sub_blocks(data: bytes, position: int, limit: int) -> tuple[int, int]:
    """Past a run of sub-blocks and its terminator; stops once past ``limit`` of them."""
    end, count = len(data), 0
    while position < end and count <= limit:
        size = data[position]
        position += 1 + size
        count += 1
        if size == 0:
            break
    return position, count


# 2. open ----------------------------------------------------------------------------------------


def open_image(data: bytes, source_format: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[source_format])
    # Pillow warns over its limit and errors at twice it; ``configure_pillow`` makes the
    # warning an error at the service's own limit.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooManyPixels("The image declares more pixels than are allowed.") from None
    except Exception:  # hostile headers raise many types; all mean the same to the client
        raise CorruptImage(f"The file looks like {source_format} but cannot be read.") from None


# 3. check ---------------------------------------------------------------------------------------


def check_size(size: tuple[int, int], options: PipelineOptions, frames: int = 1) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise CorruptImage("The image has no pixels.")
    if max(width, height) > options.max_dimension:
        raise DimensionsTooLarge(
            f"The image is {width}x{height}; each side may be at most {options.max_dimension} px."
        )
    if frames > options.max_frames:
        raise TooManyFrames(
            f"The animation has {frames} frames; at most {options.max_frames} are allowed."
        )
    pixels = width * height * frames
    if pixels > options.max_pixels:
        what = f"{frames} frames of {width}x{height}" if frames > 1 else f"{width}x{height}"
        raise TooManyPixels(
            f"The image has {what} = {pixels} pixels; at most {options.max_pixels} are allowed."
        )


def count_frames(image: Image.Image, gif: GifLayout | None, options: PipelineOptions) -> int:
    """Frames of an animation to decode, from the headers, checked against the limits before
    decoding. A GIF's are counted by ``check_structure``; they end before the first frame that
    reaches past the logical screen. APNG and WebP frames must lie inside their canvas (Pillow
    and libwebp refuse others before decoding them); AVIF frames are all the canvas's size."""
    if image.format not in ANIMATED_FORMATS:
        return 1
    try:
        frames = gif.frames if gif is not None else int(getattr(image, "n_frames", 1))
    except Exception:
        raise CorruptImage("The animation's frames cannot be read.") from None
    frames = max(frames, 1)
    check_size(image.size, options, frames)
    if gif is not None:
        frames = min(frames, max(gif.inside_screen, 1))
    return frames


# 4. decode --------------------------------------------------------------------------------------


def draft(image: Image.Image, crop: CropBox | None, options: PipelineOptions) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling) when every output is smaller.

    The scale is chosen so that the crop region stays at least as large as the largest
    thumbnail and as the original's cap (less ``DRAFT_SLACK``). Only the region's sides
    matter, not their order, so the EXIF orientation is not needed (nor read) yet.
    """
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    region = (crop.width, crop.height) if crop else (width, height)
    long_side, short_side = max(region), min(region)
    cap = min(options.original_max_side or WEBP_MAX_SIDE, WEBP_MAX_SIDE)
    largest_square = max(side for _name, side in options.squares())
    needed = max(
        min(cap, long_side) * (1 - DRAFT_SLACK) / long_side,
        min(largest_square, short_side) / short_side,
    )
    if needed >= 0.5:  # no DCT scale would do
        return
    try:
        image.draft(image.mode, (math.ceil(width * needed), math.ceil(height * needed)))
    except Exception:
        raise CorruptImage("The image data is corrupt or truncated.") from None


def decode(image: Image.Image) -> Image.Image:
    """Decode the first frame fully. Nothing reads metadata before this succeeds."""
    try:
        image.seek(0)
        image.load()
    except Exception:
        raise CorruptImage("The image data is corrupt or truncated.") from None
    # A palette PNG without its PLTE chunk decodes to indices with no colours; Pillow then
    # fails an assertion on first use (found by tests/imaging/test_fuzz.py).
    if image.mode in ("P", "PA") and image.palette is None:
        raise CorruptImage("The image has no palette.")
    return image


def later_frames(image: Image.Image, count: int) -> Iterator[Image.Image]:
    """Frames 2..count, decoded one at a time. A frame that fails to decode, or whose canvas
    differs from the first one's, ends the animation there: what played before it is kept."""
    size = image.size
    for index in range(1, count):
        try:
            image.seek(index)
            image.load()
        except Exception:
            return
        if image.size != size:
            return
        yield image


def frame_duration(image: Image.Image) -> int:
    duration = image.info.get("duration")
    value = int(duration) if isinstance(duration, int | float) and duration > 0 else 0
    # Browsers show a GIF frame of 0-10 ms for 100 ms; keep what people saw.
    if image.format == "GIF" and value <= 10:
        return 100
    return value


def loop_count(image: Image.Image) -> int:
    """WebP loop count (0 = forever) for the input's, with gif2webp's reading of GIF: no
    NETSCAPE block plays once, and ``loop=N`` repeats N times after the first play."""
    loop = image.info.get("loop")
    if not isinstance(loop, int) or loop < 0:
        return 1 if image.format == "GIF" else 0
    if image.format == "GIF" and loop > 0:
        return min(loop + 1, 65535)
    return min(loop, 65535)


def _own(image: Image.Image, animated: bool) -> Image.Image:
    # The next seek() overwrites an animation's frame in place: work on a copy of it.
    return image.copy() if animated else image


# 5. inspect -------------------------------------------------------------------------------------


def inspect(image: Image.Image) -> tuple[int, set[str]]:
    """The orientation to apply and the metadata the outputs will not carry.

    Report names: ``exif.gps``, ``exif.camera`` (make, model, serial numbers, lens, owner,
    maker notes), ``exif.datetime``, ``exif.thumbnail`` (an embedded preview), ``exif.other``,
    ``xmp``, ``iptc``, ``comment`` (JPEG/GIF comments, PNG text chunks), ``icc->srgb`` (added by
    ``to_srgb``: a profile converted, then dropped) or ``icc`` (an unusable profile dropped).
    """
    info = image.info
    orientation, removed = _inspect_exif(image)
    if image.format == "HEIF":
        # libheif has already turned the pixels upright; report what it applied.
        value = info.get("original_orientation")
        orientation = value if isinstance(value, int) and value in range(1, 9) else 1
    photoshop = info.get("photoshop")
    if isinstance(photoshop, dict) and 0x0404 in photoshop:
        removed.add("iptc")
    return orientation, removed | inspect_text(image)


def inspect_text(image: Image.Image) -> set[str]:
    """XMP and comments, which an animation may carry on any frame."""
    info = image.info
    found = set()
    if info.get("xmp") or info.get(_PNG_XMP):
        found.add("xmp")
    if info.get("comment"):
        found.add("comment")
    if image.format == "PNG":
        # tEXt, zTXt and iTXt chunks, as strings under their own keywords. ``text`` is read only
        # after load(): before it, it would decode the image (every frame of an APNG) itself.
        texts = {**info, **image.text}  # type: ignore[attr-defined]
        if any(isinstance(v, str) and k != _PNG_XMP for k, v in texts.items()):
            found.add("comment")
    return found


def _inspect_exif(image: Image.Image) -> tuple[int, set[str]]:
    # EXIF is attacker-controlled: real files carry strings and scripts here. Values are only
    # compared, never logged or returned.
    removed: set[str] = set()
    try:
        exif = exif_block(image)
        value = exif.get(_EXIF_ORIENTATION_TAG, 1)
        orientation = value if isinstance(value, int) and value in range(1, 9) else 1
        details = dict(exif.get_ifd(ExifTags.IFD.Exif))
        tags = set(exif) | set(details)
        if exif.get_ifd(ExifTags.IFD.GPSInfo):
            removed.add("exif.gps")
        if exif.get_ifd(ExifTags.IFD.IFD1):
            removed.add("exif.thumbnail")
    except Exception:
        return 1, {"exif.other"} if image.info.get("exif") else set()
    if tags & _CAMERA_TAGS:
        removed.add("exif.camera")
    if tags & _DATETIME_TAGS:
        removed.add("exif.datetime")
    if tags - _CAMERA_TAGS - _DATETIME_TAGS - _STRUCTURE_TAGS:
        removed.add("exif.other")
    return orientation, removed


def exif_block(image: Image.Image) -> Image.Exif:
    """The EXIF the file carries: its EXIF block (JPEG APP1, PNG eXIf, WebP EXIF, HEIF), or
    ImageMagick's copy of one in a PNG text chunk. Not ``getexif()``, which also takes an
    orientation from XMP when the EXIF has none: browsers ignore XMP orientation, and the
    avatar must look as the picture did to the person who chose it. Call after ``load()``: a
    PNG's eXIf may follow its pixel data."""
    exif = Image.Exif()
    block = image.info.get("exif")
    raw = image.info.get("Raw profile type exif")
    if block is None and isinstance(raw, str):
        block = bytes.fromhex("".join(raw.split("\n")[3:]))
    if isinstance(block, bytes) and block:
        exif.load(block)
    return exif


# 6. orient --------------------------------------------------------------------------------------


def orient(image: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


# 7. colour --------------------------------------------------------------------------------------


def to_srgb(image: Image.Image, removed: set[str] | None = None) -> Image.Image:
    """Return an 8-bit RGB or RGBA image in sRGB, carrying no metadata.

    ``removed`` (the report from ``inspect``) gets ``icc->srgb`` or ``icc`` when a profile was
    converted or dropped.
    """
    icc = image.info.get("icc_profile")
    image = _to_8bit(image)
    has_alpha = image.has_transparency_data
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    alpha = image.getchannel("A") if has_alpha and "A" in image.getbands() else None
    if has_alpha and alpha is None:  # transparency given as a colour key
        image = image.convert("RGBA")
        alpha = image.getchannel("A")
    if alpha is not None and alpha.getextrema() == (255, 255):
        alpha = None

    converted = _apply_icc(image, icc) if icc else None
    if removed is not None and icc:
        removed.add("icc->srgb" if converted is not None else "icc")
    if converted is None:
        if image.mode == "RGB" or (image.mode == "RGBA" and alpha is not None):
            converted = image  # already what the encoder takes: no copy
        else:
            converted = image.convert("RGB")
    if alpha is not None and converted.mode != "RGBA":
        converted = converted.convert("RGB")
        converted.putalpha(alpha)
    elif alpha is None and converted.mode != "RGB":
        converted = converted.convert("RGB")
    # Start from a fresh info dict: nothing read from the file can reach the encoder.
    converted.info = {}
    return converted


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: scale to 8 bits instead of clipping everything above 255 to white.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "F":
        return image.convert("L")
    return image


def _apply_icc(image: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert to sRGB through the embedded profile; None when the profile is unusable.

    The result is a new RGB image (alpha is put back by the caller)."""
    source_mode = {"RGBA": "RGB", "LA": "L", "La": "L", "RGBa": "RGB"}.get(image.mode, image.mode)
    if source_mode not in ("RGB", "CMYK", "L"):
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        source = image.convert(source_mode) if source_mode != image.mode else image
        if source_mode == "RGB" and _is_srgb(profile):
            return source  # already sRGB numbers
        result = ImageCms.profileToProfile(
            source,
            profile,
            ImageCms.createProfile("sRGB"),  # one per call: a profile is not shared by threads
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            outputMode="RGB",
        )
    except Exception:  # a broken or mismatched profile: fall back to the numbers as sRGB
        return None
    return result


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    # Phones commonly tag plain sRGB: a transform through it would change nothing but the time.
    description = ImageCms.getProfileDescription(profile) or ""
    return description.strip().lower().startswith("srgb")


# 8. fit -----------------------------------------------------------------------------------------


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Layout:
    """Where each output comes from, in the decoded upright image (which a draft may have made
    smaller than the file's full size)."""

    region: Box
    original_size: tuple[int, int]
    square: Box  # the centre square of the region
    square_in_original: Box | None  # the same square in the original, when it is big enough
    square_is_region: bool  # the region is itself square
    squares: tuple[tuple[str, int], ...]  # (name, side), largest first
    focus_in_original: CropBox | None = None  # the square, in whole pixels of the original


def parse_crop(text: str) -> CropBox:
    """``"x,y,w,h"`` in whole pixels of the upright image."""
    match = _CROP.fullmatch(text)
    if match is None:
        raise InvalidCrop("The crop must be four whole numbers: x,y,width,height.")
    x, y, width, height = (int(group) for group in match.groups())
    if width <= 0 or height <= 0:
        raise InvalidCrop("The crop's width and height must be positive.")
    return CropBox(x, y, width, height)


def plan(
    full_size: tuple[int, int],
    orientation: int,
    decoded_size: tuple[int, int],
    crop: CropBox | None,
    options: PipelineOptions,
    *,
    focus: CropBox | None = None,
) -> Layout:
    """The squares are the centre square of ``focus`` (upright pixels, inside the region), by
    default of the region (``crop``, else the whole picture)."""
    full_width, full_height = full_size
    if orientation in (5, 6, 7, 8):  # a quarter turn: the upright image is the other way round
        full_width, full_height = full_height, full_width
    if crop is None:
        crop = CropBox(0, 0, full_width, full_height)
    elif crop.x + crop.width > full_width or crop.y + crop.height > full_height:
        raise InvalidCrop(
            f"The crop {crop.x},{crop.y},{crop.width},{crop.height} is outside the upright "
            f"image of {full_width}x{full_height}."
        )
    sx, sy = decoded_size[0] / full_width, decoded_size[1] / full_height

    def scaled(x: float, y: float, width: float, height: float) -> Box:
        return (x * sx, y * sy, (x + width) * sx, (y + height) * sy)

    cap = min(options.original_max_side or WEBP_MAX_SIDE, WEBP_MAX_SIDE)
    factor = min(1.0, cap / max(crop.width, crop.height))
    size = (max(1, round(crop.width * factor)), max(1, round(crop.height * factor)))
    if size[0] > crop.width * sx + 0.5:  # a draft decode landed under the cap: never upscale
        size = (max(1, round(crop.width * sx)), max(1, round(crop.height * sy)))

    square_of = focus or crop
    side = min(square_of.width, square_of.height)
    left = square_of.x + (square_of.width - side) / 2
    top = square_of.y + (square_of.height - side) / 2
    squares = tuple((name, min(target, side)) for name, target in options.squares())
    ox, oy = size[0] / crop.width, size[1] / crop.height
    box = (
        (left - crop.x) * ox,
        (top - crop.y) * oy,
        (left - crop.x + side) * ox,
        (top - crop.y + side) * oy,
    )
    in_original = box if min(size) >= squares[0][1] else None
    return Layout(
        region=scaled(crop.x, crop.y, crop.width, crop.height),
        original_size=size,
        square=scaled(left, top, side, side),
        square_in_original=in_original,
        square_is_region=(focus or crop) == crop and crop.width == crop.height,
        squares=squares,
        focus_in_original=_whole_box(box, size),
    )


def _whole_box(box: Box, size: tuple[int, int]) -> CropBox:
    x, y = min(round(box[0]), size[0] - 1), min(round(box[1]), size[1] - 1)
    width = max(1, min(round(box[2] - box[0]), size[0] - x))
    height = max(1, min(round(box[3] - box[1]), size[1] - y))
    return CropBox(x, y, width, height)


def choose_square(
    image: Image.Image,
    full_size: tuple[int, int],
    orientation: int,
    crop: CropBox | None,
    options: PipelineOptions,
) -> tuple[CropBox | None, CropSource]:
    """Without a client crop, the proposed square (``app.imaging.autocrop``, run on the decoded
    upright ``image``) in upright pixels of the full picture; with one, None: its centre."""
    if crop is not None:
        return None, "client"
    square, source = propose_square(image, options.auto_crop)
    full_width, full_height = full_size
    if orientation in (5, 6, 7, 8):
        full_width, full_height = full_height, full_width
    factor = min(full_width / image.width, full_height / image.height)
    side = min(round(square.side * factor), full_width, full_height)
    x = min(round(square.x * factor), full_width - side)
    y = min(round(square.y * factor), full_height - side)
    return CropBox(x, y, side, side), source


@dataclass
class Rendered:
    original: Image.Image
    squares: list[Image.Image]


def fit(image: Image.Image, layout: Layout) -> Rendered:
    """The original and the squares of one frame. Each square is made from the one before:
    after the first, every resize is from a few hundred pixels."""
    original = resample(image, layout.original_size, layout.region)
    if layout.square_in_original is not None:
        source, box = original, layout.square_in_original
    else:
        source, box = image, layout.square
    squares = []
    for _name, side in layout.squares:
        source = resample(source, (side, side), box)
        box = (0, 0, side, side)
        squares.append(source)
    return Rendered(original, squares)


def resample(image: Image.Image, size: tuple[int, int], box: Box) -> Image.Image:
    if size == (box[2] - box[0], box[3] - box[1]) and all(float(v).is_integer() for v in box):
        if box == (0, 0, *image.size):
            return image
        left, top, right, bottom = (int(v) for v in box)
        return image.crop((left, top, right, bottom))
    return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP)


# 9. encode --------------------------------------------------------------------------------------


def encode_all(
    rendered: list[Rendered],
    durations: list[int],
    loop: int,
    layout: Layout,
    options: PipelineOptions,
    *,
    drawing: bool = False,
) -> tuple[Variant, ...]:
    """Every variant, encoding each distinct picture once: a square of the same side as another
    (a small image capped them both) or as a square original shares its bytes."""

    def animation(pick: Callable[[Rendered], Image.Image]) -> list[Image.Image]:
        return [pick(frame) for frame in rendered]

    original = encode(
        animation(lambda r: r.original),
        "original",
        **options.original_webp,
        durations=durations,
        loop=loop,
        exact=drawing,
    )
    variants = [original]
    by_side: dict[int, Variant] = {}
    for index, (name, side) in enumerate(layout.squares):
        if layout.square_is_region and original.width == original.height == side:
            same = original
        elif side in by_side:
            same = by_side[side]
        else:
            same = by_side[side] = encode(
                [frame.squares[index] for frame in rendered],
                name,
                **options.square_webp,
                durations=durations,
                loop=loop,
                exact=drawing,
            )
        variants.append(replace(same, name=name))
    if len(rendered) > 1:
        first = rendered[0].squares[0]
        variants.append(encode([first], "still", **options.square_webp, exact=drawing))
    return tuple(variants)


def encode(
    frames: list[Image.Image],
    name: str,
    *,
    quality: int,
    method: int,
    durations: list[int] | None = None,
    loop: int = 0,
    exact: bool = False,
) -> Variant:
    first = frames[0]
    if len(frames) == 1:
        data = _encode_still(first, quality=quality, method=method, exact=exact)
    else:
        data = _webp(
            first,
            save_all=True,
            append_images=frames[1:],
            duration=durations,
            loop=loop,
            background=(0, 0, 0, 0),
            quality=quality,
            method=ANIMATION_METHOD,
            minimize_size=True,
        )
    return Variant(name=name, data=data, width=first.width, height=first.height, frames=len(frames))


def _encode_still(image: Image.Image, *, quality: int, method: int, exact: bool) -> bytes:
    """Lossy WebP; for a drawing, lossless instead when that costs at most ``EXACT_BUDGET``
    more bytes."""
    lossy = _webp(image, quality=quality, method=method)
    if not exact or image.width * image.height > LOSSLESS_MAX_PIXELS:
        return lossy
    lossless = _webp(image, lossless=True, quality=LOSSLESS_EFFORT, method=LOSSLESS_METHOD)
    return lossless if len(lossless) <= len(lossy) + EXACT_BUDGET else lossy


def is_drawing(image: Image.Image) -> bool:
    """Few colours or few pixels. ``getcolors`` stops counting past the limit: a photo is
    told apart within its first few hundred pixels."""
    if image.width * image.height <= DRAWING_PIXELS:
        return True
    return image.getcolors(DRAWING_COLOURS) is not None


def _webp(image: Image.Image, **options: object) -> bytes:
    # Only pixel options are passed: no exif=, icc_profile= or xmp= may ever reach the encoder.
    return _save(image, "WEBP", **options)


# 10. derive (on request, from the stored original) ----------------------------------------------


def derive_square(
    original: bytes,
    box: CropBox,
    side: int,
    content_type: str,
    *,
    still: bool,
    options: PipelineOptions | None = None,
) -> Variant:
    """One square of ``side`` px in ``content_type``, cut from ``box`` (pixels of the stored
    original, a WebP this service wrote). An animated original stays animated in AVIF and WebP
    unless ``still`` is asked; JPEG and PNG are always its first frame. The caller caps ``side``
    at the box's side: nothing is upscaled."""
    options = options or PipelineOptions()
    image = open_image(original, "WEBP")
    check_size(image.size, options)
    decode(image)
    frames_total = max(1, int(getattr(image, "n_frames", 1)))
    moving = frames_total > 1 and not still and content_type in ANIMATED_TYPES
    region: Box = (box.x, box.y, box.x + box.width, box.y + box.height)
    frames, durations = [], []
    for index in range(frames_total if moving else 1):
        if index:
            image.seek(index)
            image.load()
        frame = image.convert("RGBA" if image.has_transparency_data else "RGB")
        frames.append(resample(frame, (side, side), region))
        durations.append(frame_duration(image))
    still_of_moving = frames_total > 1 and content_type in ANIMATED_TYPES and not moving
    name = rendition_name(content_type, side, still=still_of_moving)
    data = encode_as(frames, content_type, options, durations=durations, loop=loop_count(image))
    return Variant(name, data, side, side, content_type=content_type, frames=len(frames))


def encode_as(
    frames: list[Image.Image],
    content_type: str,
    options: PipelineOptions,
    *,
    durations: list[int] | None = None,
    loop: int = 0,
) -> bytes:
    """``frames`` (one: a still) in ``content_type``, from pixels alone: each frame's ``info``
    is emptied first, so no EXIF, XMP, ICC profile or comment can reach any encoder (Pillow's
    JPEG, PNG and AVIF writers take a profile or EXIF from ``info`` unless told otherwise)."""
    frames = [_opaque_if_possible(frame) for frame in frames]
    for frame in frames:
        frame.info = {}
    first, rest = frames[0], frames[1:]
    if content_type == WEBP:
        return encode(
            frames,
            "webp",
            **options.square_webp,
            durations=durations,
            loop=loop,
            exact=is_drawing(first),
        ).data
    animation: dict[str, object] = (
        {"save_all": True, "append_images": rest, "duration": durations, "loop": loop}
        if rest
        else {}
    )
    if content_type == AVIF:
        return _save(
            first,
            "AVIF",
            quality=options.avif_quality,
            speed=options.avif_speed,
            codec="aom",
            advanced={"tune": options.avif_tune},
            max_threads=1,
            **animation,
        )
    if content_type == JPEG:
        return _save(
            _flatten(first, options.jpeg_background),
            "JPEG",
            quality=options.jpeg_quality,
            optimize=True,
            progressive=False,
        )
    if content_type == PNG:
        return _save(first, "PNG", optimize=True)
    raise ValueError(f"no encoder for {content_type}")


def _opaque_if_possible(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        return image.convert("RGB")
    return image


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """JPEG has no alpha: a transparent picture is laid on ``background``."""
    if image.mode != "RGBA":
        return image
    flat = Image.new("RGB", image.size, background)
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def webp_has_alpha(data: bytes) -> bool:
    """Whether a WebP file (one this service wrote) carries transparency, from its header:
    the VP8X alpha flag, or the alpha bit of a lossless (VP8L) bitstream."""
    chunk = data[12:16]
    if chunk == b"VP8X":
        return bool(len(data) > 20 and data[20] & 0x10)
    if chunk == b"VP8L" and len(data) >= 25:
        return bool(int.from_bytes(data[21:25], "little") >> 28 & 1)
    return False
