"""A deep readiness check: tricky images, made here in memory, through the live codecs.

Each sample has the outcome a correct pipeline gives (accepted, or refused with a given code);
a sample that turns out otherwise means this replica's image libraries are broken or changed.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from app.core.errors import ImageError
from app.imaging.pipeline import PipelineOptions, ProcessedImage, process_image


@dataclass(frozen=True)
class Sample:
    name: str
    make: Callable[[], bytes]
    expect: str  # "accepted" or the error code
    check: Callable[[ProcessedImage], bool] = lambda result: True


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: 40 wide, 20 high; upright it is 20 x 40
    return _save(Image.new("RGB", (40, 20), (200, 30, 30)), "JPEG", exif=exif)


def _cmyk_jpeg() -> bytes:
    return _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG")


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), color) for color in ((255, 0, 0), (0, 0, 255))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _alpha_png() -> bytes:
    return _save(Image.new("RGBA", (16, 16), (0, 128, 255, 100)), "PNG")


def _bomb_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", 60000, 60000, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _truncated_jpeg() -> bytes:
    data = _save(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG", quality=90)
    return data[: len(data) // 2]


SAMPLES = (
    Sample("orientation", _rotated_jpeg, "accepted", lambda r: (r.width, r.height) == (20, 40)),
    Sample("cmyk", _cmyk_jpeg, "accepted"),
    Sample("animated", _animated_gif, "accepted"),
    Sample("alpha", _alpha_png, "accepted"),
    Sample("bomb", _bomb_png, "too_many_pixels"),
    Sample("truncated", _truncated_jpeg, "corrupt_image"),
)


def run_sample(sample: Sample, options: PipelineOptions) -> dict[str, object]:
    start = time.perf_counter()
    try:
        result = process_image(sample.make(), options)
        outcome = "accepted" if sample.check(result) else "accepted with wrong output"
    except ImageError as exc:
        outcome = exc.code
    except Exception as exc:  # the point of the check is to notice exactly this
        outcome = f"crashed ({type(exc).__name__})"
    return {
        "status": "ok" if outcome == sample.expect else "failed",
        "expected": sample.expect,
        "outcome": outcome,
        "ms": round((time.perf_counter() - start) * 1000, 1),
    }


def run_selftest(options: PipelineOptions) -> dict[str, dict[str, object]]:
    return {sample.name: run_sample(sample, options) for sample in SAMPLES}
