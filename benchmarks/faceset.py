"""A labelled set for the automatic crop: pictures whose faces (or lack of one) are known.

Three kinds of sample, each a JPEG as a phone or an export would send it:

* ``portrait``  whole pictures with one face: scikit-image's ``astronaut`` and ``camera``
                (shipped inside that package), and from the shared image corpus Pillow's
                ``hopper`` and a real portrait photo; each also stored with EXIF orientations.
* ``composite`` a head-and-shoulders cut from one of those pasted onto a background (landscape
                photos from the corpus, scikit-image's photos, drawn gradients and shapes) at a
                known position, scale (face width 8% to 45% of the picture's short side) and
                mirror, then stored with one of the eight EXIF orientations: the truth is
                exact.
* ``no-face``   landscapes, streets, food and objects from the corpus (pictures with people in
                them left out), scikit-image's drawings, text and textures, and drawn logos,
                text and gradients, also stored turned.

Face boxes are the whole face, hairline to chin and cheek to cheek, in pixels of the upright
picture. Everything is made in memory from a fixed seed: the same bytes on every run.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

Box = tuple[int, int, int, int]

# The stored pixels of a picture that EXIF orientation N shows upright: the inverse of the
# transpose a viewer applies.
STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

# Portraits: (where, face box in its pixels). Boxes measured by hand on a grid.
_PORTRAITS: dict[str, tuple[str, Box]] = {
    "astronaut": ("skimage:astronaut", (178, 66, 97, 120)),
    "camera": ("skimage:camera", (176, 86, 78, 92)),
    "hopper": ("corpus:pillow-tests/hopper.ppm", (35, 21, 55, 60)),
    "giunchedi": (
        "corpus:thumbor-fixtures/Giunchedi_2C_Filippo_January_2015_01.jpg",
        (300, 75, 200, 225),
    ),
}
# Corpus photos with no person in them (the camera samples with people are left out).
_NO_FACE_PHOTOS = (
    *(f"exif-samples/jpg/gps/DSCN00{n}.jpg" for n in (10, 12, 21, 25, 27, 29, 38, 40, 42)),
    "exif-samples/jpg/Canon_PowerShot_S40.jpg",
    "exif-samples/jpg/Reconyx_HC500_Hyperfire.jpg",
    "exif-samples/jpg/exif-org/fujifilm-dx10.jpg",
    "exif-samples/jpg/exif-org/fujifilm-finepix40i.jpg",
    "exif-samples/jpg/exif-org/fujifilm-mx1700.jpg",
    "exif-samples/jpg/exif-org/kodak-dc240.jpg",
    "exif-samples/jpg/exif-org/nikon-e950.jpg",
    "exif-samples/jpg/exif-org/olympus-c960.jpg",
    "exif-samples/jpg/exif-org/olympus-d320l.jpg",
    "exif-samples/jpg/exif-org/ricoh-rdc5300.jpg",
    "exif-samples/jpg/exif-org/sanyo-vpcg250.jpg",
    "exif-samples/jpg/exif-org/sanyo-vpcsx550.jpg",
    "exif-samples/jpg/tests/11-tests.jpg",
    "exif-samples/jpg/tests/30-type_error.jpg",
    "exif-samples/jpg/tests/33-type_error.jpg",
    "exif-samples/jpg/tests/35-empty.jpg",
    "exif-samples/jpg/tests/36-memory_error.jpg",
    "exif-samples/jpg/tests/45-gps_ifd.jpg",
    "exif-samples/jpg/tests/87_OSError.jpg",
    "exif-samples/jpg/mobile/jolla.jpg",
    "exif-samples/jpg/hdr/canon_hdr_YES.jpg",
    "exif-orientation-examples/Landscape_1.jpg",
    "exif-orientation-examples/Portrait_1.jpg",  # a figure seen from behind: no face
    "libvips-testsuite/rotation/1.jpg",
    "pillow-tests/flower.jpg",
    "pillow-tests/flower2.jpg",
)
# Backgrounds for composites, from the corpus (whole pictures, resized to fit).
_BACKGROUND_PHOTOS = (
    "exif-orientation-examples/Landscape_1.jpg",
    "exif-samples/jpg/gps/DSCN0010.jpg",
    "exif-samples/jpg/gps/DSCN0027.jpg",
    "exif-samples/jpg/exif-org/olympus-c960.jpg",
    "exif-samples/jpg/Reconyx_HC500_Hyperfire.jpg",
    "exif-samples/jpg/tests/11-tests.jpg",
)
_SKIMAGE_NO_FACE = (
    "coffee",
    "rocket",
    "chelsea",
    "horse",
    "logo",
    "text",
    "page",
    "coins",
    "brick",
    "grass",
    "gravel",
    "moon",
    "hubble_deep_field",
    "checkerboard",
    "clock",
    "cell",
    "immunohistochemistry",
)
_SKIMAGE_BACKGROUNDS = ("coffee", "rocket", "grass", "gravel", "brick", "hubble_deep_field")
_CANVASES = ((1600, 1200), (1200, 1600), (1400, 1400), (2000, 1000), (1080, 1920))
# Face width as a share of the picture's short side.
_SCALES = (0.08, 0.12, 0.18, 0.26, 0.36, 0.45)
# Composites of each head at each scale, each at its own place, canvas, background, mirror and
# orientation.
PER_SCALE = 3


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # "portrait" | "composite" | "no-face"
    data: bytes
    size: tuple[int, int]  # upright
    face: Box | None  # in upright pixels


def default_corpus() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "corpus"


def samples(
    *,
    corpus: Path | None = None,
    reduced: bool = False,
    seed: int = 15,
    per_scale: int = PER_SCALE,
) -> Iterator[Sample]:
    """Every sample of the set; ``reduced``: a quarter of it (the same pictures as in the whole
    set: every fourth composite and no-face picture, two orientations of each portrait), for a
    test. ``per_scale``: composites of each head at each face scale."""
    rng = random.Random(seed)
    corpus = corpus if corpus is not None else default_corpus()
    portraits = {name: _load(where, corpus) for name, (where, _box) in _PORTRAITS.items()}
    portraits = {name: image for name, image in portraits.items() if image is not None}

    for name, image in portraits.items():
        box = _PORTRAITS[name][1]
        for orientation in (1, 6) if reduced else (1, 3, 6, 8):
            yield _sample(f"portrait/{name}/o{orientation}", "portrait", image, box, orientation)

    backgrounds = [_load(f"corpus:{path}", corpus) for path in _BACKGROUND_PHOTOS]
    backgrounds += [_load(f"skimage:{name}", corpus) for name in _SKIMAGE_BACKGROUNDS]
    found = [b for b in backgrounds if b is not None] + [_drawn_background(rng) for _ in range(4)]
    heads = {name: _head(image, _PORTRAITS[name][1]) for name, image in portraits.items()}
    count = 0
    for name, (head, face) in sorted(heads.items()):
        for scale in _SCALES:
            for index in range(per_scale):
                canvas = rng.choice(_CANVASES)
                background = rng.choice(found)
                orientation = rng.randrange(1, 9)
                place = (rng.random() < 0.5, rng.random(), rng.random())
                count += 1
                if reduced and count % 4:
                    continue
                picture, box = _composite(head, face, background, canvas, scale, place)
                yield _sample(
                    f"composite/{name}/s{int(scale * 100)}/{index}",
                    "composite",
                    picture,
                    box,
                    orientation,
                )

    no_face = [(p, _load(f"corpus:{p}", corpus)) for p in _NO_FACE_PHOTOS]
    no_face += [(n, _load(f"skimage:{n}", corpus)) for n in _SKIMAGE_NO_FACE]
    no_face += [(f"drawn/{i}", _drawing(rng, i)) for i in range(12)]
    pictures = [(name, image) for name, image in no_face if image is not None]
    for number, (name, image) in enumerate(pictures):
        turned = rng.choice((3, 6, 8))
        if reduced and number % 4:
            continue
        for orientation in (1, turned):
            yield _sample(f"no-face/{name}/o{orientation}", "no-face", image, None, orientation)


def _load(where: str, corpus: Path) -> Image.Image | None:
    kind, _, name = where.partition(":")
    if kind == "skimage":
        try:
            from skimage import data
        except ImportError:
            return None
        array = getattr(data, name)()
        image = Image.fromarray(array)
    else:
        path = corpus / name
        if not path.is_file():
            return None
        from PIL import ImageOps

        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
    return image.convert("RGB")


def _sample(
    name: str, kind: str, upright: Image.Image, face: Box | None, orientation: int
) -> Sample:
    stored = upright
    exif = Image.Exif()
    if orientation != 1:
        stored = upright.transpose(STORE_FOR_ORIENTATION[orientation])
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=90, exif=exif)
    return Sample(name, kind, buffer.getvalue(), upright.size, face)


def _head(image: Image.Image, face: Box) -> tuple[Image.Image, Box]:
    """Head and shoulders around ``face``; the face box within the cut."""
    x, y, w, h = face
    left, top = max(0, x - w), max(0, y - int(0.7 * h))
    right, bottom = min(image.width, x + 2 * w), min(image.height, y + int(2.2 * h))
    return image.crop((left, top, right, bottom)), (x - left, y - top, w, h)


def _composite(
    head: Image.Image,
    face: Box,
    background: Image.Image,
    canvas: tuple[int, int],
    scale: float,
    place: tuple[bool, float, float],
) -> tuple[Image.Image, Box]:
    """``head`` pasted with its face ``scale`` of the short side; ``place``: mirrored, and where
    across and down (0 to 1) the cut goes."""
    picture = _cover(background, canvas)
    factor = scale * min(canvas) / face[2]
    size = (max(1, round(head.width * factor)), max(1, round(head.height * factor)))
    if size[0] > canvas[0] or size[1] > canvas[1]:  # too large a cut: keep its middle
        factor = min(factor, canvas[0] / head.width, canvas[1] / head.height)
        size = (max(1, round(head.width * factor)), max(1, round(head.height * factor)))
    cut = head.resize(size, Image.Resampling.LANCZOS)
    fx, fy, fw, fh = (round(v * factor) for v in face)
    mirrored, across, down = place
    if mirrored:
        cut = cut.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        fx = cut.width - fx - fw
    left = int(across * (canvas[0] - cut.width + 1))
    top = int(down * (canvas[1] - cut.height + 1))
    # A soft edge, as a cut-out person has, rather than a hard rectangle.
    mask = Image.new("L", cut.size, 0)
    margin = max(1, min(cut.size) // 12)
    ImageDraw.Draw(mask).rounded_rectangle(
        (margin, margin, cut.width - margin, cut.height - margin), radius=margin * 2, fill=255
    )
    mask = mask.filter(ImageFilter.GaussianBlur(margin / 2))
    picture.paste(cut, (left, top), mask)
    return picture, (left + fx, top + fy, fw, fh)


def _cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    from PIL import ImageOps

    return ImageOps.fit(image, size, Image.Resampling.BILINEAR)


def _drawn_background(rng: random.Random) -> Image.Image:
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    gradient = Image.linear_gradient("L").resize((800, 600))
    picture = Image.composite(
        Image.new("RGB", (800, 600), bottom), Image.new("RGB", (800, 600), top), gradient
    )
    draw = ImageDraw.Draw(picture)
    for _ in range(12):
        x, y = rng.randrange(800), rng.randrange(600)
        r = rng.randrange(20, 160)
        draw.ellipse((x, y, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return picture


def _drawing(rng: random.Random, index: int) -> Image.Image:
    """Logos, text and flat drawings."""
    size = rng.choice(((1200, 900), (1000, 1000), (900, 1200)))
    picture = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(picture)
    kind = index % 3
    if kind == 0:  # a logo: a few flat shapes and a word
        for _ in range(rng.randrange(2, 6)):
            x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
            w, h = rng.randrange(80, size[0] // 2), rng.randrange(80, size[1] // 2)
            shape = rng.choice((draw.ellipse, draw.rectangle))
            shape((x, y, x + w, y + h), fill=tuple(rng.randrange(256) for _ in range(3)))
        font = ImageFont.load_default(size=rng.randrange(60, 140))
        draw.text((size[0] // 8, size[1] * 2 // 3), "ACME", fill="black", font=font)
    elif kind == 1:  # a page of text
        font = ImageFont.load_default(size=rng.randrange(18, 40))
        words = [
            "the",
            "quick",
            "brown",
            "fox",
            "jumps",
            "over",
            "a",
            "lazy",
            "dog",
            "while",
            "avatars",
            "load",
        ]
        y = 20
        while y < size[1] - 40:
            line = " ".join(rng.choice(words) for _ in range(8))
            draw.text((20, y), line, fill="black", font=font)
            y += int(font.size * 1.5)
    else:  # a drawing: strokes and circles
        for _ in range(60):
            x, y = rng.randrange(size[0]), rng.randrange(size[1])
            colour = tuple(rng.randrange(256) for _ in range(3))
            if rng.random() < 0.5:
                draw.line(
                    (x, y, x + rng.randrange(-200, 200), y + rng.randrange(-200, 200)),
                    fill=colour,
                    width=rng.randrange(2, 12),
                )
            else:
                r = rng.randrange(10, 120)
                draw.ellipse((x, y, x + r, y + r), outline=colour, width=rng.randrange(2, 8))
    return picture
