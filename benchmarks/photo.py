"""A 12-megapixel phone-like JPEG made in memory, the same bytes on every run.

4032x3024 stored sideways with EXIF orientation 6 (as a phone held upright writes it), GPS,
camera make and model, capture time and an XMP packet; quality 90, 4:2:0. The pixels have a
photograph's statistics rather than a test card's: detail at every scale (summed value noise, so
the spectrum falls off like a natural image's), soft colour gradients, hard edges and flat
areas. WebP size and time depend on that content, so a flat or purely random picture would
mislead both.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageChops, ImageDraw, ImageFilter

WIDTH, HEIGHT = 4032, 3024
GPS_IFD = 0x8825
EXIF_IFD = 0x8769
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    b'xmp:CreatorTool="benchmark-camera"/></rdf:RDF></x:xmpmeta>'
)


def phone_photo(
    width: int = WIDTH, height: int = HEIGHT, *, seed: int = 12, quality: int = 90
) -> bytes:
    """JPEG bytes of a ``width`` x ``height`` picture stored with EXIF orientation 6."""
    upright = _scene(height, width, random.Random(seed))  # portrait, as the person saw it
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the sensor's landscape readout
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to view
    exif[0x010F] = "BenchPhone"  # Make
    exif[0x0110] = "Model 12"  # Model
    exif[0x0132] = "2026:11:21 10:00:00"  # DateTime
    exif.get_ifd(EXIF_IFD).update({0x9003: "2026:11:21 10:00:00"})  # DateTimeOriginal
    exif.get_ifd(GPS_IFD).update(
        {1: "N", 2: (48.0, 51.0, 29.6), 3: "E", 4: (2.0, 17.0, 40.2), 5: 0, 6: 35.0}
    )
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=quality, subsampling="4:2:0", exif=exif, xmp=XMP)
    return buffer.getvalue()


def _noise(size: tuple[int, int], cells: tuple[int, int], rng: random.Random) -> Image.Image:
    """Value noise: random cells scaled up smoothly."""
    coarse = Image.frombytes("L", cells, rng.randbytes(cells[0] * cells[1]))
    return coarse.resize(size, Image.Resampling.BICUBIC)


def _scene(width: int, height: int, rng: random.Random) -> Image.Image:
    size = (width, height)
    channels = []
    for _band in range(3):
        # Octaves of value noise, each half as strong as the one before: a 1/f-like spectrum.
        layer = _noise(size, (6, 8), rng)
        weight = 0.5
        for cells in ((24, 32), (96, 128), (384, 512), (width // 2, height // 2)):
            layer = Image.blend(layer, _noise(size, cells, rng), weight)
            weight *= 0.5
        channels.append(layer)
    picture = Image.merge("RGB", channels)
    # Sky-to-ground gradient and some warmth, as most photos have.
    gradient = Image.linear_gradient("L").resize(size)
    tint = Image.merge(
        "RGB", (gradient, gradient.point(lambda v: v * 0.8), gradient.point(lambda v: 255 - v))
    )
    picture = Image.blend(picture, tint, 0.35)
    # Objects: hard edges, flat areas and small text-like detail.
    draw = ImageDraw.Draw(picture)
    for _ in range(40):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(40, width // 3), rng.randrange(40, height // 3)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=colour)
    for _ in range(600):
        x, y = rng.randrange(width), rng.randrange(height)
        draw.line(
            (x, y, x + rng.randrange(-60, 60), y + rng.randrange(-60, 60)),
            fill=tuple(rng.randrange(256) for _ in range(3)),
            width=rng.randrange(1, 4),
        )
    picture = picture.filter(ImageFilter.GaussianBlur(0.6))  # lens softness
    # What is left of sensor noise after a phone's denoising: faint, a couple of pixels wide.
    grain = _noise(size, (width // 2, height // 2), rng).point(lambda v: 128 + (v - 128) // 20)
    return ImageChops.add(
        picture, Image.merge("RGB", (grain, grain, grain)), scale=1.0, offset=-128
    )
