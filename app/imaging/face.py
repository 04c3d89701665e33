"""Faces in a picture, found to place its square crop: picture in, boxes out.

Faces are looked for on a grey, histogram-equalised copy whose short side is ``DETECT_SIDE``
pixels (long side at most ``DETECT_LONG``), by OpenCV's LBP frontal-face cascade: about four
times as fast as a Haar cascade on the same copy, which lets the copy be large enough for faces
of 8% of the short side (the cascade's box is a little wider than the face's hairline-to-chin
box). Each face it finds is confirmed by the frontal Haar cascade (``haarcascade_frontalface_alt``)
on a small patch around it, which costs little and turns the false faces away. When the LBP pass
finds none, the profile Haar cascade (``haarcascade_profileface``, both ways round) looks for
large faces turned aside on a smaller copy.

The weights come inside packages, nothing is fetched at run time: the Haar cascades in the
``opencv-python-headless`` 4.x wheel (``cv2.data``; the 5.x wheels no longer ship them), the LBP
cascade in scikit-image (``skimage/data/lbpcascade_frontalface_opencv.xml``, OpenCV's own file;
one of its tags is misspelt there, ``featuhreParams``, and is read as ``featureParams``). The
cascades and their parameters were chosen by measurement on the labelled set (benchmarks/face.py;
figures in the README). The boxes are only used to place the crop: callers must not store,
return or log them.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import NamedTuple

import cv2
import cv2.data as cv2_data
import numpy as np
from PIL import Image

HAAR = "haarcascade_frontalface_alt.xml"
PROFILE = "haarcascade_profileface.xml"
LBP = "lbpcascade_frontalface_opencv.xml"
# The copy faces are looked for on: short side DETECT_SIDE, long side at most DETECT_LONG.
DETECT_SIDE = 240
DETECT_LONG = 480
# LBP pass: its 24 px window is the smallest face looked for (a tenth of the copy's short side;
# the cascade's box is wider than the face's hairline-to-chin box, so faces of 8% are found);
# each step of the image pyramid is LBP_STEP smaller than the one before; a face is kept when
# more than LBP_NEIGHBOURS overlapping windows found it (few: the confirmation below turns the
# false ones away, and small faces are found by few windows).
LBP_WINDOW = 24
LBP_STEP = 1.25
LBP_NEIGHBOURS = 1
# Confirmation: the frontal Haar cascade, on a patch CONFIRM_MARGIN face widths larger on each
# side scaled so that the face is CONFIRM_FACE px wide, must find a face there too.
CONFIRM_MARGIN = 0.5
CONFIRM_FACE = 30
CONFIRM_STEP = 1.1
CONFIRM_NEIGHBOURS = 1
WINDOW = 20  # the Haar cascades' window
# Profiles, when the LBP pass found no face: faces of at least PROFILE_MIN_FACE of the short
# side, on a copy whose short side is PROFILE_SIDE, not equalised (a bright sky behind a face
# turned aside hid it once equalised), both ways round.
PROFILE_SIDE = 120
PROFILE_MIN_FACE = 0.25
PROFILE_STEP = 1.2
PROFILE_NEIGHBOURS = 2

# OpenCV's own thread pool would compete with the image pool's threads for the same cores.
cv2.setNumThreads(1)
_local = threading.local()


class Face(NamedTuple):
    """A face's box in the pixels of the picture given to ``detect_faces``."""

    x: float
    y: float
    width: float
    height: float


def _load(name: str) -> cv2.CascadeClassifier:
    if name == LBP:
        text = (resources.files("skimage") / "data" / LBP).read_text()
        storage = cv2.FileStorage(
            text.replace("featuhreParams", "featureParams"),
            cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY,
        )
        cascade = cv2.CascadeClassifier()
        cascade.read(storage.getFirstTopLevelNode())
    else:
        cascade = cv2.CascadeClassifier(cv2_data.haarcascades + name)
    if cascade.empty():
        raise RuntimeError(f"the face detector {name} could not be loaded")
    return cascade


def classifier(name: str) -> cv2.CascadeClassifier:
    """The cascade ``name`` (``HAAR``, ``PROFILE`` or ``LBP``). A classifier is not shared
    between threads: each worker thread loads its own, once."""
    loaded = _local.__dict__.setdefault("classifiers", {})
    found: cv2.CascadeClassifier | None = loaded.get(name)
    if found is None:
        found = loaded[name] = _load(name)
    return found


def detect_faces(image: Image.Image) -> list[Face]:
    """The faces in ``image``, largest first."""
    small = small_copy(image, DETECT_SIDE, DETECT_LONG)
    factor = small.width / image.width
    raw = np.asarray(small.convert("L"))
    grey = cv2.equalizeHist(raw)
    found: list[tuple[float, float, float, float]] = [
        (float(x), float(y), float(w), float(h))
        for x, y, w, h in classifier(LBP).detectMultiScale(
            grey,
            scaleFactor=LBP_STEP,
            minNeighbors=LBP_NEIGHBOURS,
            minSize=(LBP_WINDOW, LBP_WINDOW),
        )
        if _confirmed(grey, (x, y, w, h))
    ]
    if not found:
        found = _profiles(raw)
    faces = [Face(*(v / factor for v in box)) for box in found]
    return sorted(faces, key=lambda face: face.width * face.height, reverse=True)


def _confirmed(grey: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether the Haar cascade finds a face on the patch around ``box`` too."""
    x, y, w, h = box
    margin = round(CONFIRM_MARGIN * w)
    left, top = max(0, x - margin), max(0, y - margin)
    patch = grey[top : y + h + margin, left : x + w + margin]
    scale = CONFIRM_FACE / w
    size = (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale)))
    patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    side = max(WINDOW, round(CONFIRM_FACE * 0.7))
    found = classifier(HAAR).detectMultiScale(
        patch, scaleFactor=CONFIRM_STEP, minNeighbors=CONFIRM_NEIGHBOURS, minSize=(side, side)
    )
    return len(found) > 0


def _profiles(raw: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Large faces turned aside, both ways round, in the pixels of ``raw``."""
    shrink = min(1.0, PROFILE_SIDE / min(raw.shape))
    size = (max(1, round(raw.shape[1] * shrink)), max(1, round(raw.shape[0] * shrink)))
    grey = cv2.resize(raw, size, interpolation=cv2.INTER_AREA) if shrink < 1.0 else raw
    large = max(WINDOW, round(PROFILE_MIN_FACE * min(grey.shape)))
    found: list[tuple[float, float, float, float]] = []
    for flipped in (False, True):
        g = np.ascontiguousarray(grey[:, ::-1]) if flipped else grey
        for x, y, w, h in classifier(PROFILE).detectMultiScale(
            g, scaleFactor=PROFILE_STEP, minNeighbors=PROFILE_NEIGHBOURS, minSize=(large, large)
        ):
            left = grey.shape[1] - x - w if flipped else x
            found.append((left / shrink, y / shrink, w / shrink, h / shrink))
    return found


def small_copy(image: Image.Image, short_side: int, long_side: int) -> Image.Image:
    """``image`` with its short side at most ``short_side`` and its long side at most
    ``long_side``: an integer reduction (box filter, the cheapest), then a box resize."""
    factor = min(1.0, short_side / min(image.size), long_side / max(image.size))
    if factor == 1.0:
        return image
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    reduced = image.reduce(max(1, int(1 / factor)))
    if reduced.size == size:
        return reduced
    return reduced.resize(size, Image.Resampling.BOX)
