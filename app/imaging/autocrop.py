"""The square an upload without a client crop is cut to: picture in, square out.

``propose_square`` tries, in this order, as far as the mode allows:

1. ``face``     faces found on a downscaled copy (``app.imaging.face``); the square holds the
                largest face, or every face when they fit in a square no larger than the
                picture's short side, with room for hair above and chin and neck below;
2. ``content``  smartcrop's analysis (edges, saturation, skin) on a small copy chooses where a
                square of the short side sits along the long side, when it finds one clearly
                better than the centre;
3. ``centre``   the centre square.

The square is clamped to the picture. Face boxes go no further than this module: only the
square and the name of the step that chose it are returned.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Literal, NamedTuple

from PIL import Image

if TYPE_CHECKING:
    from smartcrop import SmartCrop

    from app.imaging.face import Face

AutoCrop = Literal["face", "content", "centre"]
CropSource = Literal["face", "content", "centre", "client"]

# Square side per face width: a head-and-shoulders avatar, the face a little above the middle.
FACE_ZOOM = 2.4
# Where the face's centre sits in the square, from its top (hair above, chin and neck below).
FACE_CENTRE_AT = 0.45
# smartcrop works on a copy of this long side, scoring on cells of SCORE_CELL pixels.
CONTENT_SIDE = 120
SCORE_CELL = 4
# The content square must score this much better than the centre square to be chosen: with
# less, small faces the detector missed were cut off more often than the centre cuts them
# (measured on two draws of the labelled set).
CONTENT_MARGIN = 0.01

# OpenCV (the face step) and smartcrop with NumPy (the content step) are imported with the first
# proposal: a server process only imports this module, its image workers run it (the worker
# pool's forkserver makes them ready once, ``app.imaging.warm``).


@functools.cache
def _smartcrop() -> SmartCrop:
    from smartcrop import SmartCrop

    return SmartCrop(score_down_sample=SCORE_CELL)


class Square(NamedTuple):
    """A square of the picture, in its pixels."""

    x: int
    y: int
    side: int


def propose_square(image: Image.Image, mode: AutoCrop = "face") -> tuple[Square, CropSource]:
    """The square to cut the avatar's squares from, and which step chose it."""
    width, height = image.size
    if mode == "centre":
        return centre_square(width, height), "centre"
    from app.imaging.face import DETECT_LONG, DETECT_SIDE, Face, detect_faces, small_copy

    # One small copy serves both steps, as face.detect_faces looks at it (it makes no second
    # copy): the proposal never touches the large image again.
    small = small_copy(image, DETECT_SIDE, DETECT_LONG).convert("RGB")
    factor = small.width / width
    if mode == "face":
        faces = [Face(*(v / factor for v in face)) for face in detect_faces(small)]
        if faces:
            return _around_faces(faces, width, height), "face"
    square = _by_content(small, factor, (width, height))
    if square is not None:
        return square, "content"
    return centre_square(width, height), "centre"


def centre_square(width: int, height: int) -> Square:
    side = min(width, height)
    return Square((width - side) // 2, (height - side) // 2, side)


def _around_faces(faces: list[Face], width: int, height: int) -> Square:
    short = min(width, height)
    left = min(face.x for face in faces)
    top = min(face.y for face in faces)
    right = max(face.x + face.width for face in faces)
    bottom = max(face.y + face.height for face in faces)
    widest = max(face.width for face in faces)
    margin = (FACE_ZOOM - 1) * widest
    if len(faces) > 1 and max(right - left, bottom - top) + margin > short:
        face = faces[0]  # all of them do not fit: the largest
        left, top, right, bottom = face.x, face.y, face.x + face.width, face.y + face.height
        widest = face.width
    side = min(short, max(right - left, bottom - top) + (FACE_ZOOM - 1) * widest)
    centre_x = (left + right) / 2
    centre_y = (top + bottom) / 2
    x = _clamp(centre_x - side / 2, width - side)
    y = _clamp(centre_y - FACE_CENTRE_AT * side, height - side)
    side = int(side)
    return Square(min(x, width - side), min(y, height - side), side)


def _by_content(small: Image.Image, factor: float, size: tuple[int, int]) -> Square | None:
    """smartcrop's best square of the short side, or None when it is no better than the
    centre (a square picture, a flat one). ``small`` is the picture scaled by ``factor``."""
    width, height = size
    if width == height:
        return None
    shrink = min(1.0, CONTENT_SIDE / max(small.size))
    if shrink < 1.0:
        small = small.resize(
            (max(1, round(small.width * shrink)), max(1, round(small.height * shrink)))
        )
        factor *= shrink
    side = min(small.size)
    if side < SCORE_CELL * 2 or max(small.size) - side < SCORE_CELL:
        return None
    result = _smartcrop().analyse(
        small, side, side, min_scale=1.0, max_scale=1.0, num_scale_steps=1, step=SCORE_CELL
    )
    crops = result["crops"]
    middle = (max(small.size) - side) / 2
    centre = min(crops, key=lambda crop: abs(max(crop["x"], crop["y"]) - middle))
    best = result["top_crop"]
    if best["score"] - centre["score"] < CONTENT_MARGIN:
        return None
    short = min(width, height)
    offset = round(max(best["x"], best["y"]) / factor)
    offset = _clamp(offset, max(width, height) - short)
    return Square(offset, 0, short) if width > height else Square(0, offset, short)


def _clamp(value: float, upper: float) -> int:
    return int(max(0, min(round(value), int(upper))))
