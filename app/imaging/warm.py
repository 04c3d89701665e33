"""What an image worker would otherwise do in its first job, done once in the worker pool's
forkserver (``app.imaging.pool.PRELOAD`` imports this module there), so that every worker forked
from it starts ready: Pillow's format plugins registered, the face detector's cascades loaded
(which imports OpenCV and scikit-image, where one of them lies) and smartcrop made (with NumPy).
Without it each new worker paid about 50 ms of CPU in its first job. A server process never
imports this module."""

from __future__ import annotations

from PIL import Image

from app.imaging import autocrop, face

Image.init()
for _name in (face.HAAR, face.PROFILE, face.LBP):
    # Kept per thread: the forkserver's thread is the one each forked worker runs its jobs in.
    face.classifier(_name)
autocrop._smartcrop()
