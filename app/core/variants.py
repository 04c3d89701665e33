"""The variant vocabulary: what an avatar's stored images are called, where they are stored and
how a set of them is read. Every layer speaks it; it imports nothing from ``app``.

An avatar is a set of variants, each one stored object:

- ``original``: the upright picture (or the client's crop of it), capped in size;
- ``thumb``: the main square (the largest; 400 px by default);
- ``thumb-<side>``: more squares, e.g. ``thumb-64``;
- ``still``: for an animation only, the first frame of ``thumb``.

Objects live under ``avatars/<version>/<name>.<extension>``: the version is a fresh random token
per change, so every key is immutable, and nothing a client sends ever names a key.

On the row (``Avatar.variants``) a set is a JSON list of objects in the order they were made,
``original`` first, each with the fields of ``StoredVariant`` in declaration order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

ORIGINAL = "original"
THUMB = "thumb"
STILL = "still"
SQUARE_PREFIX = "thumb-"

# Every key the service makes starts with this; nothing else in a shared bucket is touched.
KEY_PREFIX = "avatars/"
WEBP = "image/webp"
EXTENSIONS = {WEBP: "webp"}


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
        return {
            "name": self.name,
            "key": self.key,
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "content_type": self.content_type,
            "frames": self.frames,
        }

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
