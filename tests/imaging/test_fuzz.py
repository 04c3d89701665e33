"""Property-based fuzzing of the pipeline with mutations of the shared corpus's real files.

Hypothesis takes real images (camera JPEGs with maker notes, progressive/CMYK/arithmetic JPEGs,
16-bit/interlaced/APNG PNGs, animated GIF and WebP, VP8X WebP with metadata) and damages them as
an attacker or a broken uploader would: flipped bytes, truncations, spliced bytes and chunks
(PNG chunks, RIFF chunks, JPEG segments, also from another file), and huge, zero or lying
declared sizes in every header that carries one (PNG IHDR with a valid CRC, JPEG SOF, GIF screen
and frame descriptors, WebP VP8X canvas, VP8/VP8L frame headers, animation frames).

The property: ``process_image`` either returns clean WebP variants within the configured
limits or raises an ``ImageError`` (the service's 415/422), never any other exception; each
example finishes within a time bound and its peak memory (resident set, measured from
``/proc``) stays within a memory bound. The limits are the shipped defaults.

Under ``CI=true`` the examples are derandomized (tests/security/fuzz_settings.py), so CI tries
the same ones every run; ``AVATAR_FUZZ_SCALE=20`` runs twenty times as many locally.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from app.core.errors import CorruptImage, ImageError
from app.imaging.pipeline import PipelineOptions, process_image
from tests.conftest import CORPUS
from tests.images import assert_clean_webp, measured
from tests.security.fuzz_settings import fuzz_settings

pytestmark = pytest.mark.corpus

OPTIONS = PipelineOptions()  # the shipped limits
# Per example, on the project's 2-core machine; the slowest seeds take a few hundred ms.
TIME_BOUND_SECONDS = 10.0
# Peak resident memory of one example above what the process held when it started. The worst
# case allowed by the limits is a 4096x4096 RGBA canvas (64 MiB) and its resized copies.
MEMORY_BOUND_MB = 512

# Real files, each exercising a different decoder path. All are accepted unmutated, except the
# last ones, which are rejected (422) and mutate into other broken shapes.
SEEDS = (
    "pillow-tests/hopper.jpg",  # baseline JPEG
    "libvips-testsuite/rotation/6.jpg",  # progressive, ICC, EXIF orientation 6
    "pillow-tests/pil_sample_cmyk.jpg",  # CMYK, Adobe APP14
    "imgproxy-testdata/test1.arith.jpg",  # arithmetic coding
    "exif-samples/jpg/Canon_40D.jpg",  # camera maker notes, EXIF thumbnail
    "exiftool-t-images/ExifTool.jpg",  # MPO with every metadata block
    "pillow-tests/exif-dpi-zerodivision.jpg",  # historic Pillow crash in EXIF parsing
    "pngsuite/basn6a16.png",  # 16-bit RGBA
    "pngsuite/basi3p08.png",  # interlaced palette
    "pillow-tests/icc_profile.png",  # ICC profile
    "imgproxy-testdata/orientation-6.png",  # eXIf chunk
    "pillow-tests/apng/delay.png",  # APNG, 5 frames
    "libvips-testsuite/cogs.gif",  # animated GIF, transparency
    "pillow-tests/hopper.gif",  # still GIF
    "pillow-tests/hopper.webp",  # simple lossy WebP (VP8)
    "exiftool-t-images/RIFF.webp",  # VP8X, ALPH, EXIF and XMP chunks
    "libvips-testsuite/big-height.webp",  # animated WebP, 99 frames
    "libvips-testsuite/looks-like-svg.webp",  # VP8X with alpha, "<svg" in its bytes
    "pillow-tests/truncated_jpeg.jpg",  # rejected: truncated
    "pngsuite/xdtn0g01.png",  # rejected: missing IDAT
)


@functools.cache
def load_seeds() -> dict[str, bytes]:
    return {name: (CORPUS / name).read_bytes() for name in SEEDS}


@pytest.fixture(scope="module")
def seeds(corpus: Path) -> dict[str, bytes]:
    """The seeds; through the ``corpus`` fixture, so a missing corpus skips (fails in CI)
    before Hypothesis draws anything."""
    return load_seeds()


# Chunked containers ------------------------------------------------------------------------------


def split_chunks(data: bytes) -> tuple[bytes, list[bytes], bytes] | None:
    """(head, chunks, tail) of a PNG (chunks), a WebP (RIFF chunks) or a JPEG (marker segments
    before the scan); None for anything else or when the structure is already broken."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _split(data, 8, lambda d, p: 12 + struct.unpack(">I", d[p : p + 4])[0])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _split(data, 12, lambda d, p: 8 + _even(struct.unpack("<I", d[p + 4 : p + 8])[0]))
    if data.startswith(b"\xff\xd8"):
        head, chunks, position = data[:2], [], 2
        while position + 4 <= len(data) and data[position] == 0xFF:
            marker = data[position + 1]
            if marker == 0xDA:  # start of scan: the entropy-coded rest is the tail
                break
            end = position + 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
            chunks.append(data[position:end])
            position = end
        return head, chunks, data[position:]
    return None


def _even(size: int) -> int:
    return size + (size & 1)


def _split(data: bytes, start: int, length: Callable[[bytes, int], int]):
    chunks, position = [], start
    while position + 8 <= len(data):
        end = position + length(data, position)
        chunks.append(data[position:end])
        position = end
    return data[:start], chunks, data[position:]


# Declared sizes ----------------------------------------------------------------------------------


def _put(data: bytearray, offset: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if offset + size <= len(data):
        limit = (1 << (8 * size)) - 1
        struct.pack_into(fmt, data, offset, min(max(value, 0), limit))


def _put24(data: bytearray, offset: int, value: int) -> None:
    if offset + 3 <= len(data):
        data[offset : offset + 3] = min(max(value, 0), 0xFFFFFF).to_bytes(3, "little")


def declare_size(data: bytes, width: int, height: int, fix_checksums: bool) -> bytes:
    """Write ``width`` x ``height`` into every size field this format's headers carry."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 33:
        _put(out, 16, ">I", min(width, 2**31 - 1))
        _put(out, 20, ">I", min(height, 2**31 - 1))
        if fix_checksums:
            _put(out, 29, ">I", zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"\xff\xd8"):
        parts = split_chunks(data)
        position = 2
        for chunk in parts[1] if parts else []:
            if 0xC0 <= chunk[1] <= 0xCF and chunk[1] not in (0xC4, 0xC8, 0xCC):  # SOFn
                _put(out, position + 5, ">H", height)
                _put(out, position + 7, ">H", width)
            position += len(chunk)
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 13:
        _put(out, 6, "<H", width)
        _put(out, 8, "<H", height)
        descriptor = _first_gif_descriptor(data)
        if descriptor is not None:
            _put(out, descriptor + 5, "<H", width)
            _put(out, descriptor + 7, "<H", height)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        parts = split_chunks(data)
        position = 12
        for chunk in parts[1] if parts else []:
            kind, body = chunk[:4], position + 8
            if kind == b"VP8X":
                _put24(out, body + 4, width - 1)
                _put24(out, body + 7, height - 1)
            elif kind == b"ANMF":
                _put24(out, body + 6, width - 1)
                _put24(out, body + 9, height - 1)
            elif kind == b"VP8 ":
                _put(out, body + 6, "<H", min(width, 0x3FFF))
                _put(out, body + 8, "<H", min(height, 0x3FFF))
            elif kind == b"VP8L" and body + 5 <= len(out):
                bits = struct.unpack_from("<I", out, body + 1)[0]
                w, h = min(max(width - 1, 0), 0x3FFF), min(max(height - 1, 0), 0x3FFF)
                struct.pack_into("<I", out, body + 1, (bits & ~0xFFFFFFF) | w | (h << 14))
            position += len(chunk)
    return bytes(out)


def _first_gif_descriptor(data: bytes) -> int | None:
    position = 13
    if data[10] & 0x80:
        position += 3 << ((data[10] & 7) + 1)
    while position < len(data):
        block = data[position]
        if block == 0x2C:
            return position
        if block != 0x21:
            return None
        position += 2
        while position < len(data) and data[position]:
            position += 1 + data[position]
        position += 1
    return None


# Mutations ---------------------------------------------------------------------------------------

SIZES = st.one_of(
    st.sampled_from([0, 1, 2, 4095, 4096, 4097, 8192, 16384, 65535, 2**24, 2**31 - 1]),
    st.integers(min_value=0, max_value=2**31 - 1),
)


@dataclass(frozen=True)
class Mutant:
    label: str
    data: bytes

    def __repr__(self) -> str:  # the bytes would make Hypothesis's report unreadable
        digest = hashlib.sha256(self.data).hexdigest()[:12]
        return f"Mutant({self.label!r}, {len(self.data)} bytes, sha256 {digest}...)"


@st.composite
def mutated(draw: st.DrawFn) -> Mutant:
    """A seed with one to three mutations applied in turn; the label says which."""
    seeds = load_seeds()
    name = draw(st.sampled_from(SEEDS))
    data = seeds[name]
    steps = [name]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(st.sampled_from(MUTATIONS))
        data, detail = kind(draw, data, seeds)
        steps.append(detail)
    return Mutant(" | ".join(steps), data)


def flip_bytes(draw: st.DrawFn, data: bytes, _seeds) -> tuple[bytes, str]:
    if not data:
        return data, "flip (empty)"
    out = bytearray(data)
    # Headers are where parsers decide sizes and offsets: most flips land in the first 1 KiB.
    head = min(len(out), 1024)
    flips = draw(st.lists(st.tuples(st.booleans(), st.integers(0, 2**32), st.integers(1, 255)),
                          min_size=1, max_size=16))  # fmt: skip
    for in_head, where, mask in flips:
        position = where % (head if in_head else len(out))
        out[position] ^= mask
    return bytes(out), f"flip {len(flips)}"


def truncate(draw: st.DrawFn, data: bytes, _seeds) -> tuple[bytes, str]:
    cut = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
    return data[:cut], f"truncate at {cut}"


def splice_bytes(draw: st.DrawFn, data: bytes, seeds: dict[str, bytes]) -> tuple[bytes, str]:
    donor = seeds[draw(st.sampled_from(SEEDS))]
    start = draw(st.integers(0, max(len(donor) - 1, 0)))
    length = draw(st.integers(1, 4096))
    at = draw(st.integers(0, len(data)))
    replace = draw(st.booleans())
    piece = donor[start : start + length]
    end = at + len(piece) if replace else at
    return data[:at] + piece + data[end:], f"splice {len(piece)} bytes at {at}"


def splice_chunks(draw: st.DrawFn, data: bytes, seeds: dict[str, bytes]) -> tuple[bytes, str]:
    parts = split_chunks(data)
    if parts is None or not parts[1]:
        return splice_bytes(draw, data, seeds)
    head, chunks, tail = parts
    chunks = list(chunks)
    operation = draw(st.sampled_from(["drop", "duplicate", "swap", "foreign", "huge-length"]))
    i = draw(st.integers(0, len(chunks) - 1))
    j = draw(st.integers(0, len(chunks) - 1))
    if operation == "drop":
        del chunks[i]
    elif operation == "duplicate":
        chunks.insert(j, chunks[i])
    elif operation == "swap":
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif operation == "foreign":
        donor = split_chunks(seeds[draw(st.sampled_from(SEEDS))])
        if donor and donor[1]:
            chunks.insert(j, donor[1][draw(st.integers(0, len(donor[1]) - 1))])
    else:  # the chunk claims to be far longer than the file
        chunk = bytearray(chunks[i])
        big = draw(st.sampled_from([0x7FFFFFFF, 0xFFFFFFFF, 0xFFFF, 0x10000000]))
        if data.startswith(b"\x89PNG"):
            _put(chunk, 0, ">I", big)
        elif data.startswith(b"RIFF"):
            _put(chunk, 4, "<I", big)
        else:
            _put(chunk, 2, ">H", big)
        chunks[i] = bytes(chunk)
    return head + b"".join(chunks) + tail, f"chunks: {operation} {i} {j}"


def huge_declared_size(draw: st.DrawFn, data: bytes, _seeds) -> tuple[bytes, str]:
    width, height = draw(SIZES), draw(SIZES)
    fix = draw(st.booleans())
    return declare_size(data, width, height, fix), f"declare {width}x{height} crc={fix}"


MUTATIONS = (flip_bytes, truncate, splice_bytes, splice_chunks, huge_declared_size)


# The property ------------------------------------------------------------------------------------


def run_bounded(data: bytes) -> tuple[object, float, float]:
    """(the result or the ImageError, seconds, peak MB above the start) of one example."""
    return measured(process_image, data, OPTIONS)


def check_variants(result) -> None:
    names = [variant.name for variant in result.variants]
    assert names[:2] == ["original", "thumb"], names
    for variant in result.variants:
        assert variant.content_type == "image/webp"
        assert max(variant.width, variant.height) <= OPTIONS.max_dimension
        assert_clean_webp(variant.data)
        with Image.open(io.BytesIO(variant.data)) as image:
            assert image.size == (variant.width, variant.height), variant.name
            # libwebp merges identical consecutive frames (a duplicated ANMF chunk), so the
            # file may hold fewer frames than were rendered; never more, never a still as
            # an animation or the other way round.
            frames = getattr(image, "n_frames", 1)
            assert frames <= variant.frames and (frames > 1) == (variant.frames > 1), variant
            image.load()


def check_example(data: bytes, label: str) -> None:
    outcome, seconds, peak_mb = run_bounded(data)
    assert seconds < TIME_BOUND_SECONDS, f"{label}: {seconds:.1f} s"
    assert peak_mb < MEMORY_BOUND_MB, f"{label}: {peak_mb:.0f} MB above the start"
    if not isinstance(outcome, ImageError):
        check_variants(outcome)


def test_seeds_are_what_the_fuzzer_expects(seeds: dict[str, bytes]) -> None:
    """The unmutated seeds: all accepted but the last two, so mutations start from real,
    working structures."""
    for name, data in seeds.items():
        outcome, _seconds, _peak = run_bounded(data)
        rejected = isinstance(outcome, ImageError)
        assert rejected == (name in SEEDS[-2:]), (name, outcome)


@fuzz_settings(max_examples=500, deadline=timedelta(seconds=TIME_BOUND_SECONDS))
@given(mutant=mutated())
def test_mutated_corpus_images_give_variants_or_an_image_error(corpus, mutant: Mutant) -> None:
    check_example(mutant.data, mutant.label)


@pytest.mark.parametrize(
    ("seed", "width", "height"),
    [
        ("pngsuite/basn6a16.png", 2**31 - 1, 2**31 - 1),  # CRC valid
        ("pngsuite/basn6a16.png", 4097, 1),
        ("pngsuite/basn6a16.png", 0, 0),
        ("pillow-tests/hopper.jpg", 65535, 65535),
        ("pillow-tests/hopper.jpg", 0, 128),
        ("libvips-testsuite/cogs.gif", 65535, 1),
        ("pillow-tests/hopper.webp", 16383, 16383),
        ("exiftool-t-images/RIFF.webp", 2**24, 2**24),
        ("libvips-testsuite/big-height.webp", 4096, 4096),  # 99 frames: 1.6 GP in all
    ],
)
def test_sizes_over_the_limits_are_refused_before_decoding(seeds, seed, width, height) -> None:
    data = declare_size(seeds[seed], width, height, fix_checksums=True)
    assert data != seeds[seed]
    outcome, seconds, peak_mb = run_bounded(data)
    assert isinstance(outcome, ImageError), f"{seed} declared {width}x{height} was accepted"
    assert seconds < 1, seconds
    assert peak_mb < 64, peak_mb


@pytest.mark.parametrize(
    "seed",
    [
        "pngsuite/basn6a16.png",
        "pillow-tests/hopper.jpg",
        "libvips-testsuite/cogs.gif",
        "pillow-tests/hopper.webp",
        "exiftool-t-images/RIFF.webp",
    ],
)
def test_sizes_at_the_limit_without_the_data_stay_bounded(seeds, seed: str) -> None:
    """4096x4096 (the largest side allowed) with the data of a small image: the decoder may
    allocate the canvas and then fail, or fill the rest (libjpeg does); either way it is fast
    and within the memory bound, and anything returned is a clean set of variants."""
    side = OPTIONS.max_dimension
    check_example(declare_size(seeds[seed], side, side, fix_checksums=True), f"{seed} at {side}")


def test_a_palette_png_without_its_palette_is_corrupt(seeds) -> None:
    """Found by the fuzzer: with PLTE dropped, Pillow decoded palette indices without colours
    and then failed an assertion (a 500 through the API)."""
    head, chunks, tail = split_chunks(seeds["pngsuite/basi3p08.png"])
    without_palette = head + b"".join(c for c in chunks if c[4:8] != b"PLTE") + tail
    outcome, _seconds, _peak = run_bounded(without_palette)
    assert isinstance(outcome, CorruptImage), outcome
