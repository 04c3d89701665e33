"""Faces in a picture, found to place its square crop: picture in, boxes out.

The detectors are OpenCV's Haar cascades for frontal faces (``haarcascade_frontalface_alt``)
and, when none is found, for large faces turned to the side (``haarcascade_profileface``, both
ways round). Their weights come inside the ``opencv-python-headless`` 4.x wheel (``cv2.data``;
the 5.x wheels no longer ship them): nothing is fetched at run time. The cascade and its
parameters were chosen by measurement on the labelled set (benchmarks/face.py; figures in the
README): the other frontal cascades of the wheel found fewer faces or more false ones.

It looks at a grey, histogram-equalised copy whose long side is at most ``DETECT_SIDE`` pixels:
cheap enough to add about 25 ms of CPU to a 12 MP upload. The boxes are only used to place the
crop: callers must not store, return or log them.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import cv2
import cv2.data as cv2_data
import numpy as np
from PIL import Image

CASCADE = "haarcascade_frontalface_alt.xml"
PROFILE = "haarcascade_profileface.xml"
# The copy faces are looked for on (short side, pixels; the long side at most DETECT_LONG), and
# the smallest face looked for: the cascades' 20 px window, or MIN_FACE of the short side.
DETECT_SIDE = 150
DETECT_LONG = 300
WINDOW = 20
MIN_FACE = 0.07
# Each step of the detector's image pyramid is SCALE_STEP smaller than the one before; a face is
# kept when at least NEIGHBOURS overlapping windows found it (fewer false faces on textures).
SCALE_STEP = 1.25
NEIGHBOURS = 3
# Profiles: only faces of at least PROFILE_MIN_FACE of the short side, in coarser steps (the
# profile cascade runs twice, both ways round).
PROFILE_MIN_FACE = 0.25
PROFILE_SCALE_STEP = 1.4
PROFILE_NEIGHBOURS = 4

# OpenCV's own thread pool would compete with the image pool's threads for the same cores.
cv2.setNumThreads(1)
_local = threading.local()


class Face(NamedTuple):
    """A face's box in the pixels of the picture given to ``detect_faces``."""

    x: float
    y: float
    width: float
    height: float


def _classifier(name: str = CASCADE) -> cv2.CascadeClassifier:
    # A classifier is not shared between threads: each worker thread loads its own, once.
    loaded = _local.__dict__.setdefault("classifiers", {})
    classifier: cv2.CascadeClassifier | None = loaded.get(name)
    if classifier is None:
        classifier = cv2.CascadeClassifier(cv2_data.haarcascades + name)
        if classifier.empty():
            raise RuntimeError(f"the face detector {name} could not be loaded")
        loaded[name] = classifier
    return classifier


def detect_faces(image: Image.Image) -> list[Face]:
    """The faces in ``image``, largest first."""
    grey, factor = grey_copy(image, DETECT_SIDE, DETECT_LONG)
    side = max(WINDOW, round(MIN_FACE * min(grey.shape)))
    found = list(
        _classifier().detectMultiScale(
            grey, scaleFactor=SCALE_STEP, minNeighbors=NEIGHBOURS, minSize=(side, side)
        )
    )
    if not found:
        # Faces turned to the side, looked for only large (they cost less): both ways round.
        large = max(WINDOW, round(PROFILE_MIN_FACE * min(grey.shape)))
        profile = _classifier(PROFILE)
        for flipped in (False, True):
            g = np.ascontiguousarray(grey[:, ::-1]) if flipped else grey
            for x, y, w, h in profile.detectMultiScale(
                g,
                scaleFactor=PROFILE_SCALE_STEP,
                minNeighbors=PROFILE_NEIGHBOURS,
                minSize=(large, large),
            ):
                found.append((grey.shape[1] - x - w if flipped else x, y, w, h))
    faces = [Face(x / factor, y / factor, w / factor, h / factor) for x, y, w, h in found]
    return sorted(faces, key=lambda face: face.width * face.height, reverse=True)


def grey_copy(image: Image.Image, short_side: int, long_side: int) -> tuple[np.ndarray, float]:
    """A grey copy with its short side at most ``short_side`` and its long side at most
    ``long_side``, histogram-equalised, and the factor from ``image`` to it."""
    factor = min(1.0, short_side / min(image.size), long_side / max(image.size))
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    small = image.convert("L") if factor == 1.0 else image.resize(size, reducing_gap=2.0)
    grey = np.asarray(small.convert("L"))
    return cv2.equalizeHist(grey), factor
