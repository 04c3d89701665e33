"""Placeholders a client can show before the image arrives: a BlurHash string (the `blurhash`
library) and the dominant colour. Pure: pixels in, text out."""

from __future__ import annotations

from dataclasses import dataclass

import blurhash
from PIL import Image

# 4x4 components: enough shape for a face-sized blur, 36 characters.
COMPONENTS = (4, 4)
PALETTE_COLOURS = 8
# A blur needs few pixels: 32x32 keeps the (pure Python) encoder near 10 ms.
SAMPLE_SIDE = 32


@dataclass(frozen=True)
class Placeholder:
    blurhash: str
    dominant_color: str  # "#rrggbb"


def make_placeholder(image: Image.Image) -> Placeholder:
    """From a (small) square of the avatar; transparency is shown over white, as most pages do."""
    sample = image
    if max(sample.size) > SAMPLE_SIDE:
        sample = sample.resize((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.BILINEAR)
    rgb = _over_white(sample)
    width = rgb.width
    flat = rgb.tobytes()
    rows = [
        [list(flat[i : i + 3]) for i in range(row * width * 3, (row + 1) * width * 3, 3)]
        for row in range(rgb.height)
    ]
    text = blurhash.encode(rows, components_x=COMPONENTS[0], components_y=COMPONENTS[1])
    return Placeholder(blurhash=text, dominant_color=_dominant(rgb))


def _over_white(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _dominant(rgb: Image.Image) -> str:
    """The most frequent colour after reducing the picture to a few: the colour a person would
    name, where an average of a red shirt and a blue sky would be neither."""
    quantized = rgb.quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
    palette: list[int] = quantized.getpalette() or []
    counts = quantized.getcolors(PALETTE_COLOURS) or [(1, 0)]
    _count, index = max(counts)
    assert isinstance(index, int)  # a palette image's colours are palette indexes
    red, green, blue = palette[index * 3 : index * 3 + 3]
    return f"#{red:02x}{green:02x}{blue:02x}"
