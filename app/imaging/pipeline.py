"""The image pipeline: untrusted bytes in, sanitised WebP variants out.

Pure: no I/O besides memory, no HTTP, no database. Every step treats the input as hostile, in
this fixed order:

1. ``sniff``       type by content (magic bytes), never by name or declared type
2. ``open_image``  Pillow opened with only that format allowed; header parsed, no pixels yet
3. ``check_size``  width x height and each side checked before any pixel is decoded
4. ``decode``      ``load()`` the first frame; any decoder exception becomes ``CorruptImage``
5. ``orient``      EXIF orientation applied by transposing pixels
6. ``to_srgb``     embedded ICC profile (RGB, CMYK or grey) converted to sRGB; 16-bit to 8-bit
7. ``encode``      WebP written from a fresh image: no EXIF, XMP, IPTC, ICC or comments survive
8. ``square``      centre-cropped square thumbnail, never upscaled
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageCms, ImageFile

from app.core.errors import (
    CorruptImage,
    DimensionsTooLarge,
    TooManyPixels,
    UnsupportedFormat,
)

# A truncated file is corrupt, never "the pixels we managed to read".
ImageFile.LOAD_TRUNCATED_IMAGES = False

WEBP_CONTENT_TYPE = "image/webp"

_MAGIC: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda b: b.startswith(b"\xff\xd8\xff"), "JPEG"),
    (lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), "PNG"),
    (lambda b: b[:6] in (b"GIF87a", b"GIF89a"), "GIF"),
    (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", "WEBP"),
)

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose,
# which we do not use because it carries the EXIF block, GPS included, onto its result).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class PipelineOptions:
    max_pixels: int = 50_000_000
    max_dimension: int = 4096
    thumbnail_size: int = 400
    original_quality: int = 85
    thumbnail_quality: int = 80
    webp_method: int = 4


@dataclass(frozen=True)
class Variant:
    name: str
    data: bytes
    width: int
    height: int
    content_type: str = WEBP_CONTENT_TYPE


@dataclass(frozen=True)
class ProcessedImage:
    source_format: str
    width: int
    height: int
    orientation: int
    variants: tuple[Variant, ...] = field(default_factory=tuple)

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


def process_image(data: bytes, options: PipelineOptions | None = None) -> ProcessedImage:
    """Validate and sanitise ``data``; return the ``original`` and ``thumb`` WebP variants.

    Raises only ``app.core.errors.ImageError`` subclasses for bad input.
    """
    options = options or PipelineOptions()
    source_format = sniff(data)
    image = open_image(data, source_format)
    check_size(image.size, options)
    image = decode(image)
    orientation = read_orientation(image)
    image = orient(image, orientation)
    image = to_srgb(image)

    original = encode(image, "original", quality=options.original_quality, options=options)
    thumb = encode(
        square(image, options.thumbnail_size),
        "thumb",
        quality=options.thumbnail_quality,
        options=options,
    )
    return ProcessedImage(
        source_format=source_format,
        width=image.width,
        height=image.height,
        orientation=orientation,
        variants=(original, thumb),
    )


def sniff(data: bytes) -> str:
    for matches, name in _MAGIC:
        if matches(data[:16]):
            return name
    raise UnsupportedFormat("The file is not a JPEG, PNG, GIF or WebP image.")


def open_image(data: bytes, source_format: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[source_format])
    # Pillow errors at twice its own limit and only warns below that; check_size() covers the
    # rest. The warning is caught too for when warnings are errors (as under the tests).
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooManyPixels("The image declares more pixels than are allowed.") from None
    except Exception:  # hostile headers raise many types; all mean the same to the client
        raise CorruptImage(f"The file looks like {source_format} but cannot be read.") from None


def check_size(size: tuple[int, int], options: PipelineOptions) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise CorruptImage("The image has no pixels.")
    if width * height > options.max_pixels:
        raise TooManyPixels(
            f"The image has {width}x{height} = {width * height} pixels; "
            f"at most {options.max_pixels} are allowed."
        )
    if max(width, height) > options.max_dimension:
        raise DimensionsTooLarge(
            f"The image is {width}x{height}; each side may be at most {options.max_dimension} px."
        )


def decode(image: Image.Image) -> Image.Image:
    """Decode the first frame fully. Nothing reads metadata before this succeeds."""
    try:
        image.seek(0)
        image.load()
    except Exception:
        raise CorruptImage("The image data is corrupt or truncated.") from None
    return image


def read_orientation(image: Image.Image) -> int:
    # EXIF is attacker-controlled: real files carry strings here. Anything but 1-8 means upright.
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def orient(image: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def to_srgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB or RGBA image in sRGB, carrying no metadata."""
    icc = image.info.get("icc_profile")
    image = _to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in image.info
    )
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA" if has_alpha else "RGB")
    alpha = image.getchannel("A") if has_alpha and "A" in image.getbands() else None
    if has_alpha and alpha is None:  # transparency given as a colour key
        image = image.convert("RGBA")
        alpha = image.getchannel("A")

    converted = _apply_icc(image, icc) if icc else None
    if converted is None:
        converted = image.convert("RGB")
    if alpha is not None and alpha.getextrema() != (255, 255):
        converted = converted.convert("RGB")
        converted.putalpha(alpha)
    # Start from a fresh info dict: nothing read from the file can reach the encoder.
    converted.info = {}
    return converted


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: scale to 8 bits instead of clipping everything above 255 to white.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "F":
        return image.convert("L")
    return image


def _apply_icc(image: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert to sRGB through the embedded profile; None when the profile is unusable."""
    source_mode = {"RGBA": "RGB", "LA": "L"}.get(image.mode, image.mode)
    if source_mode not in ("RGB", "CMYK", "L"):
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        source = image.convert(source_mode) if source_mode != image.mode else image
        result = ImageCms.profileToProfile(
            source,
            profile,
            _SRGB,
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            outputMode="RGB",
        )
    except Exception:  # a broken or mismatched profile: fall back to the numbers as sRGB
        return None
    return result


def square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and scale down to ``size``; never upscale."""
    side = min(image.width, image.height)
    target = min(size, side)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    return image.resize(
        (target, target),
        Image.Resampling.LANCZOS,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )


def encode(image: Image.Image, name: str, *, quality: int, options: PipelineOptions) -> Variant:
    buffer = io.BytesIO()
    # Only pixel options are passed: no exif=, icc_profile= or xmp= may ever reach the encoder.
    image.save(buffer, "WEBP", quality=quality, method=options.webp_method)
    return Variant(name=name, data=buffer.getvalue(), width=image.width, height=image.height)
