"""The variant vocabulary: what an avatar's stored images are called, where they are stored and
how a set of them is read. Every layer speaks it; it imports nothing from ``app``.

An avatar is a set of variants, each one stored object:

- ``original``: the upright picture (or the client's crop of it), capped in size;
- ``thumb``: the main square (the largest; 400 px by default);
- ``thumb-<side>``: more squares, e.g. ``thumb-64``;
- ``still``: for an animation only, the first frame of ``thumb``;
- renditions, derived on first request from the original (with the avatar's crop) and appended
  to the set: ``<format>-<side>`` (``avif-128``, ``jpeg-48``) and, for an animation,
  ``<format>-still-<side>`` (its first frame). Formats are ``FORMATS``; sides come from the size
  ladder (``ladder_side``).

Objects live under ``avatars/<version>/<name>.<extension>``: the version is a fresh random token
per change, so every key is immutable, and nothing a client sends ever names a key.

On the row (``Avatar.variants``) a set is a JSON list of objects in the order they were made,
``original`` first, each with the fields of ``StoredVariant`` in declaration order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ORIGINAL = "original"
THUMB = "thumb"
STILL = "still"
SQUARE_PREFIX = "thumb-"

# Every key the service makes starts with this; nothing else in a shared bucket is touched.
KEY_PREFIX = "avatars/"
WEBP = "image/webp"
AVIF = "image/avif"
JPEG = "image/jpeg"
PNG = "image/png"
EXTENSIONS = {WEBP: "webp", AVIF: "avif", JPEG: "jpg", PNG: "png"}
# The names clients use (``?format=``) and the content types they stand for, best first.
FORMATS = {"avif": AVIF, "webp": WEBP, "jpeg": JPEG, "png": PNG}
FORMAT_OF = {content_type: name for name, content_type in FORMATS.items()}
# Formats that keep an animation moving; JPEG and PNG are always the still.
ANIMATED_TYPES = frozenset({AVIF, WEBP})
_RENDITION = re.compile(r"(avif|webp|jpeg|png)-(still-)?([1-9][0-9]{0,4})")


def rendition_name(content_type: str, side: int, *, still: bool) -> str:
    """The name of a derived square: ``avif-128``, or ``webp-still-96`` for an animation's
    first frame."""
    return f"{FORMAT_OF[content_type]}-{'still-' if still else ''}{side}"


def parse_rendition(name: str) -> tuple[str, int, bool] | None:
    """(content type, side, still) of a rendition name, None for any other name."""
    match = _RENDITION.fullmatch(name)
    if match is None:
        return None
    return FORMATS[match.group(1)], int(match.group(3)), match.group(2) is not None


def ladder_side(ladder: Sequence[int], wanted: int, *, largest: int) -> int:
    """The side served for ``wanted`` px: the smallest ladder side at least ``wanted`` (else the
    ladder's largest), never more than ``largest`` (the square's own side: never upscaled)."""
    rung = next((side for side in sorted(ladder) if side >= wanted), max(ladder))
    return max(1, min(rung, largest))


def square_name(side: int, *, main_side: int) -> str:
    """The name of the square of ``side`` px when the main square is ``main_side`` px."""
    return THUMB if side == main_side else f"{SQUARE_PREFIX}{side}"


def is_square(name: str) -> bool:
    return name == THUMB or name.startswith(SQUARE_PREFIX)


def object_key(version: str, name: str, content_type: str = WEBP) -> str:
    """The storage key of one variant of one version."""
    return f"{KEY_PREFIX}{version}/{name}.{EXTENSIONS[content_type]}"


@dataclass(frozen=True, slots=True)
class StoredVariant:
    """One stored image of an avatar, as the row records it."""

    name: str
    key: str
    width: int
    height: int
    bytes: int
    content_type: str
    frames: int = 1

    @property
    def is_square(self) -> bool:
        return is_square(self.name)

    @property
    def animated(self) -> bool:
        return self.frames > 1

    def to_json(self) -> dict[str, Any]:
        """The row's JSON object: every field, in declaration order."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> StoredVariant:
        return cls(
            name=value["name"],
            key=value["key"],
            width=value["width"],
            height=value["height"],
            bytes=value["bytes"],
            content_type=value["content_type"],
            frames=value.get("frames", 1),  # rows older than animation support
        )


@dataclass(frozen=True, slots=True)
class VariantSet:
    """An avatar's stored images, in the order they were made (``original`` first)."""

    variants: tuple[StoredVariant, ...]

    def __post_init__(self) -> None:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")

    @classmethod
    def of(cls, *variants: StoredVariant) -> VariantSet:
        return cls(tuple(variants))

    def __iter__(self) -> Iterator[StoredVariant]:
        return iter(self.variants)

    def __len__(self) -> int:
        return len(self.variants)

    def __contains__(self, name: object) -> bool:
        return any(variant.name == name for variant in self.variants)

    def get(self, name: str) -> StoredVariant | None:
        return next((variant for variant in self.variants if variant.name == name), None)

    def __getitem__(self, name: str) -> StoredVariant:
        variant = self.get(name)
        if variant is None:
            raise KeyError(name)
        return variant

    @property
    def names(self) -> list[str]:
        return [variant.name for variant in self.variants]

    @property
    def keys(self) -> list[str]:
        return [variant.key for variant in self.variants]

    @property
    def original(self) -> StoredVariant:
        return self[ORIGINAL]

    @property
    def thumb(self) -> StoredVariant:
        return self[THUMB]

    @property
    def still(self) -> StoredVariant:
        """The still picture: an animation's first frame, else the main square itself."""
        return self.get(STILL) or self.thumb

    @property
    def animated(self) -> bool:
        return self.original.animated

    @property
    def squares(self) -> list[StoredVariant]:
        """The squares, smallest first, one per side."""
        by_side = {variant.width: variant for variant in self.variants if variant.is_square}
        return [by_side[side] for side in sorted(by_side)]

    def rendition(self, content_type: str, side: int, *, still: bool) -> StoredVariant | None:
        """A stored square of this type and side that moves as asked (``still``: one frame;
        else as the avatar does): an upload's square or a derived one."""
        moving = self.animated and not still
        return next(
            (
                variant
                for variant in self.variants
                if variant.name != ORIGINAL
                and variant.content_type == content_type
                and variant.width == variant.height == side
                and variant.animated == moving
            ),
            None,
        )

    def with_variant(self, variant: StoredVariant) -> VariantSet:
        """This set with ``variant`` appended (a rendition derived later)."""
        return VariantSet((*self.variants, variant))

    def square_for(self, size: int) -> StoredVariant:
        """The smallest square at least ``size`` px, else the largest one."""
        squares = self.squares
        return next((square for square in squares if square.width >= size), squares[-1])

    def srcset(self, url: Callable[[str], str]) -> str:
        """The squares as an HTML srcset (``url 64w, url 128w, ...``); ``url`` maps a key."""
        return ", ".join(f"{url(square.key)} {square.width}w" for square in self.squares)

    def to_json(self) -> list[dict[str, Any]]:
        return [variant.to_json() for variant in self.variants]

    @classmethod
    def from_json(cls, value: list[Mapping[str, Any]]) -> VariantSet:
        return cls(tuple(StoredVariant.from_json(item) for item in value))
