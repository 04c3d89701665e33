"""Images made in the tests, and a parser that reads what a stored WebP really carries."""

from __future__ import annotations

import io
import re
import resource
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageCms

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def jpeg_with_metadata(
    size: tuple[int, int] = (640, 480),
    *,
    orientation: int = 1,
    color: tuple[int, int, int] = (200, 60, 30),
    gps: bool = True,
    xmp: bytes = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret-xmp</x:xmpmeta>',
    comment: bytes = b"secret-comment",
) -> bytes:
    image = Image.new("RGB", size, color)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "SecretCameraMaker"  # Make
    exif[0x0110] = "SecretModel"  # Model
    if gps:
        exif.get_ifd(GPS_IFD).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 0.0)})
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, xmp=xmp, comment=comment, quality=90)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def marked_orientation_jpeg(orientation: int) -> bytes:
    """A 60x40 upright picture (red left half, blue right half, green top-left block) stored
    rotated/flipped as a camera would, with the EXIF orientation that undoes it."""
    from app.imaging.pipeline import _ORIENTATION_TRANSPOSE
    from benchmarks.faceset import STORE_FOR_ORIENTATION as inverse

    upright = upright_marker()
    stored = upright
    assert set(inverse) == set(_ORIENTATION_TRANSPOSE)
    if orientation in inverse:
        stored = upright.transpose(inverse[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(stored, "JPEG", exif=exif, quality=95)


def upright_marker() -> Image.Image:
    image = Image.new("RGB", (60, 40), (220, 20, 20))
    image.paste((20, 20, 220), (30, 0, 60, 40))
    image.paste((20, 200, 20), (0, 0, 15, 10))
    return image


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG header declaring a huge canvas, with a tiny IDAT: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def cmyk_jpeg_with_profile() -> bytes:
    """A CMYK JPEG; without a CMYK ICC profile at hand, Pillow's own conversion is the reference."""
    image = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red ink mix
    return encode(image, "JPEG", quality=95)


def srgb_profile_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def riff_chunks(data: bytes) -> list[str]:
    """The FourCC of every chunk in a WebP file, parsed from the bytes themselves."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP", "not a WebP file"
    chunks = []
    offset = 12
    while offset + 8 <= len(data):
        fourcc = data[offset : offset + 4].decode("latin-1")
        (size,) = struct.unpack("<I", data[offset + 4 : offset + 8])
        chunks.append(fourcc)
        offset += 8 + size + (size & 1)
    return chunks


FORBIDDEN_CHUNKS = {"EXIF", "XMP ", "ICCP"}
VP8X_METADATA_FLAGS = 0x20 | 0x08 | 0x04  # ICC, EXIF, XMP


def assert_clean_webp(data: bytes, *, markers: tuple[bytes, ...] = ()) -> None:
    chunks = riff_chunks(data)
    assert not FORBIDDEN_CHUNKS & set(chunks), f"metadata chunks in output: {chunks}"
    if chunks and chunks[0] == "VP8X":
        flags = data[20]
        assert not flags & VP8X_METADATA_FLAGS, f"VP8X announces metadata: {flags:#x}"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "WEBP"
        for key in ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment"):
            assert not image.info.get(key), f"{key} in output"
        assert not image.getexif(), "EXIF readable from output"
    for marker in markers:
        assert marker not in data, f"payload marker {marker!r} in output"


JPEG_METADATA_MARKERS = {0xE1: "APP1 (EXIF/XMP)", 0xE2: "APP2 (ICC)", 0xED: "APP13 (IPTC)"}
PNG_PIXEL_CHUNKS = {"IHDR", "PLTE", "tRNS", "IDAT", "IEND", "acTL", "fcTL", "fdAT"}
# ISOBMFF items that carry metadata (EXIF, XMP as "mime"), and colour boxes with ICC profiles.
_AVIF_ITEM_TYPE = re.compile(rb"infe\x02\x00\x00\x00.{4}(.{4})", re.DOTALL)
_AVIF_ICC = re.compile(rb"colr(prof|rICC)")


def jpeg_markers(data: bytes) -> list[int]:
    """The markers of a JPEG's header segments, up to its first scan."""
    assert data[:2] == b"\xff\xd8", "not a JPEG file"
    markers, offset = [], 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        markers.append(marker)
        if marker == 0xDA:
            break
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        offset += 2 + length
    return markers


def png_chunk_types(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append(data[offset + 4 : offset + 8].decode("latin-1"))
        offset += 12 + length
    return chunks


def assert_clean_image(data: bytes, content_type: str, *, markers: tuple[bytes, ...] = ()) -> None:
    """No metadata in an output of any format, read from its bytes and by Pillow."""
    if content_type == "image/webp":
        assert_clean_webp(data, markers=markers)
        return
    if content_type == "image/jpeg":
        found = [JPEG_METADATA_MARKERS.get(m, hex(m)) for m in jpeg_markers(data)]
        assert not set(found) & set(JPEG_METADATA_MARKERS.values()), found
        assert 0xFE not in jpeg_markers(data), "a JPEG comment in output"
    elif content_type == "image/png":
        chunks = png_chunk_types(data)
        assert set(chunks) <= PNG_PIXEL_CHUNKS, f"metadata chunks in output: {chunks}"
    elif content_type == "image/avif":
        items = {match.group(1) for match in _AVIF_ITEM_TYPE.finditer(data)}
        assert not items & {b"Exif", b"mime"}, f"metadata items in output: {items}"
        assert not _AVIF_ICC.search(data), "an ICC profile in output"
    else:
        raise AssertionError(f"no check for {content_type}")
    with Image.open(io.BytesIO(data)) as image:
        assert Image.MIME[image.format] == content_type, image.format
        for key in ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "dpi"):
            assert not image.info.get(key), f"{key} in output"
        assert not image.getexif(), "EXIF readable from output"
        assert not getattr(image, "text", None), "text chunks in output"
    for marker in markers:
        assert marker not in data, f"payload marker {marker!r} in output"


# Hostile files: little data, much decoding work ------------------------------------------------


def progressive_jpeg_with_scans(scans: int, size: tuple[int, int] = (4096, 4096)) -> bytes:
    """A progressive JPEG whose first scan header is repeated ``scans`` times with no data: 14
    bytes a scan, and each one still a pass of libjpeg over every block of the image."""
    data = encode(Image.new("RGB", size, (120, 90, 60)), "JPEG", progressive=True)
    start = data.index(b"\xff\xda")
    header = data[start : start + 2 + int.from_bytes(data[start + 2 : start + 4], "big")]
    return data[:start] + header * scans + b"\xff\xd9"


def jpeg_with_empty_segments(count: int) -> bytes:
    """A small JPEG with ``count`` empty comment segments (4 bytes each) before its frame."""
    data = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_empty_chunks(count: int) -> bytes:
    """A small PNG with ``count`` empty private chunks (12 bytes each) before its pixels."""
    data = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "PNG")
    first = data.index(b"IDAT") - 4
    return data[:first] + png_chunk(b"abCd", b"") * count + data[first:]


def gif_with_comment_blocks(count: int) -> bytes:
    """A small GIF with a comment of ``count`` one-byte sub-blocks before its frame."""
    data = encode(Image.new("P", (16, 16)), "GIF")
    frame = data.index(b"\x2c")
    return data[:frame] + b"\x21\xfe" + b"\x01a" * count + b"\x00" + data[frame:]


def gif_with_a_frame_past_its_screen(
    frame: tuple[int, int], screen: tuple[int, int] = (16, 16)
) -> bytes:
    """A GIF whose first frame fills its ``screen`` and whose second frame is ``frame`` large:
    decoders grow the canvas to hold it. The second frame's pixels are one LZW clear code and
    the end code, so the file stays tiny whatever the frame's size."""
    data = encode(Image.new("P", screen), "GIF")
    second = b"\x2c" + struct.pack("<HHHH", 0, 0, *frame) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return data[:-1] + second + data[-1:]


def jpeg_with_xmp_orientation(orientation: int) -> bytes:
    """``upright_marker()`` as it is, with no EXIF and an XMP ``tiff:Orientation``: browsers
    ignore XMP orientation and show the picture upright."""
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        b'tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>' % orientation
    )
    return encode(upright_marker(), "JPEG", xmp=xmp, quality=95)


# Work measured -----------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match, field
    return int(match.group(1))


def _reset_peak_memory() -> bool:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measured(func: Callable[..., object], *args: object) -> tuple[object, float, float]:
    """(the result or the ImageError, seconds, peak MB above the start) of ``func(*args)``."""
    from app.core.errors import ImageError

    precise = _reset_peak_memory()
    before_kib = _status_kib("VmRSS") if precise else resource.getrusage(resource.RUSAGE_SELF)[2]
    started = time.perf_counter()
    try:
        outcome: object = func(*args)
    except ImageError as exc:
        outcome = exc
    seconds = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM") if precise else resource.getrusage(resource.RUSAGE_SELF)[2]
    return outcome, seconds, max(peak_kib - before_kib, 0) / 1024


# scikit-image's astronaut portrait (shipped in that package): the head-and-shoulders cut pasted
# by ``face_photo``, and the whole face (hairline to chin) within that cut.
_HEAD_CUT = (100, 0, 360, 330)
_HEAD_FACE = (78, 66, 97, 120)


def face_photo(
    size: tuple[int, int] = (1200, 600),
    *,
    face_left: int = 900,
    face_top: int = 100,
    face_width: int = 200,
) -> tuple[bytes, tuple[int, int, int, int]]:
    """A JPEG with one face at a known place on a plain background, and that face's box."""
    from skimage import data

    head = Image.fromarray(data.astronaut()).crop(_HEAD_CUT)
    factor = face_width / _HEAD_FACE[2]
    head = head.resize((round(head.width * factor), round(head.height * factor)))
    fx, fy, fw, fh = (round(v * factor) for v in _HEAD_FACE)
    picture = Image.new("RGB", size, (70, 90, 120))
    picture.paste(head, (face_left - fx, face_top - fy))
    return encode(picture, "JPEG", quality=90), (face_left, face_top, fw, fh)
