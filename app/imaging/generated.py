"""Default avatars for users without one, made here (no outside call), the same for the same
user id every time: ``initials``, ``identicon`` (a GitHub-style 5x5 symmetric pattern) and
``mp`` (a "mystery person" silhouette). Pure: a user id, a size and a format in, image bytes
out (lossless WebP, or AVIF, JPEG and PNG as the pipeline writes renditions)."""

from __future__ import annotations

import colorsys
import hashlib
import io
import re
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont

from app.core.variants import WEBP
from app.imaging.pipeline import PipelineOptions, encode_as

DEFAULT_STYLES = ("initials", "identicon", "mp")


def _digest(user_id: str) -> bytes:
    return hashlib.sha256(user_id.encode("utf-8")).digest()


def _colour(digest: bytes, *, saturation: float, lightness: float) -> tuple[int, int, int]:
    hue = int.from_bytes(digest[:2], "big") / 65535
    red, green, blue = colorsys.hls_to_rgb(hue, lightness, saturation)
    return round(red * 255), round(green * 255), round(blue * 255)


def initials_of(user_id: str) -> str:
    """Up to two letters: the first of the first two words ("jane.doe" -> "JD"), else the first
    two characters of a single word ("alice" -> "AL")."""
    words = [word for word in re.split(r"[\W_]+", user_id) if word]
    if not words:
        return "?"
    if len(words) == 1:
        return words[0][:2].upper()
    return (words[0][0] + words[1][0]).upper()


def initials(user_id: str, size: int) -> Image.Image:
    background = _colour(_digest(user_id), saturation=0.45, lightness=0.42)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(6, round(size * 0.42)))
    draw.text(
        (size / 2, size / 2), initials_of(user_id), fill=(255, 255, 255), font=font, anchor="mm"
    )
    return image


def identicon(user_id: str, size: int) -> Image.Image:
    digest = _digest(user_id)
    foreground = _colour(digest[2:], saturation=0.55, lightness=0.5)
    cells = Image.new("RGB", (7, 7), (240, 240, 240))  # a 5x5 pattern with a one-cell margin
    bits = int.from_bytes(digest[4:8], "big")
    for row in range(5):
        for column in range(3):
            if bits >> (row * 3 + column) & 1:
                cells.putpixel((1 + column, 1 + row), foreground)
                cells.putpixel((5 - column, 1 + row), foreground)
    return cells.resize((size, size), Image.Resampling.NEAREST)


def mystery_person(_user_id: str, size: int) -> Image.Image:
    scale = 4  # drawn larger, then scaled down: smooth edges without an antialiasing pass
    side = size * scale
    image = Image.new("RGB", (side, side), (219, 219, 219))
    draw = ImageDraw.Draw(image)
    figure = (255, 255, 255)
    head = side * 0.2
    centre = side / 2
    draw.ellipse((centre - head, side * 0.2, centre + head, side * 0.2 + 2 * head), fill=figure)
    draw.ellipse((side * 0.14, side * 0.66, side * 0.86, side * 1.3), fill=figure)
    return image.resize((size, size), Image.Resampling.LANCZOS)


_STYLES: dict[str, Callable[[str, int], Image.Image]] = {
    "initials": initials,
    "identicon": identicon,
    "mp": mystery_person,
}


def default_avatar(style: str, user_id: str, size: int, content_type: str = WEBP) -> bytes:
    """A ``size`` px square of ``style`` for ``user_id``: lossless WebP (flat colours), or
    ``content_type`` as renditions are written."""
    image = _STYLES[style](user_id, size)
    if content_type != WEBP:
        return encode_as([image], content_type, PipelineOptions())
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", lossless=True, quality=80, method=4)
    return buffer.getvalue()
