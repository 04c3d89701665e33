"""The variant vocabulary: names, keys and how a set is read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import app.core.variants as variants_module
from app.core.variants import (
    KEY_PREFIX,
    StoredVariant,
    VariantSet,
    is_square,
    object_key,
    square_name,
)


def variant(name: str, side: int, *, frames: int = 1, height: int | None = None) -> StoredVariant:
    return StoredVariant(
        name=name,
        key=object_key("v1", name),
        width=side,
        height=side if height is None else height,
        bytes=side,
        content_type="image/webp",
        frames=frames,
    )


STILL_SET = VariantSet.of(
    variant("original", 900, height=600),
    variant("thumb", 400),
    variant("thumb-256", 256),
    variant("thumb-64", 64),
)


def test_names_and_keys() -> None:
    assert square_name(400, main_side=400) == "thumb"
    assert square_name(64, main_side=400) == "thumb-64"
    assert is_square("thumb") and is_square("thumb-64")
    assert not is_square("original") and not is_square("still")
    assert object_key("abc", "thumb-64") == "avatars/abc/thumb-64.webp"
    assert object_key("abc", "original").startswith(KEY_PREFIX)


def test_a_set_names_its_parts() -> None:
    assert STILL_SET.original.width == 900
    assert STILL_SET.thumb.name == "thumb"
    assert STILL_SET.still is STILL_SET.thumb  # a still picture is its own still
    assert not STILL_SET.animated
    assert [square.width for square in STILL_SET.squares] == [64, 256, 400]
    assert STILL_SET.keys[0] == "avatars/v1/original.webp"
    assert "thumb-64" in STILL_SET and "still" not in STILL_SET
    with pytest.raises(KeyError):
        STILL_SET["thumb-128"]


@pytest.mark.parametrize(
    ("size", "side"), [(1, 64), (64, 64), (65, 256), (256, 256), (300, 400), (5000, 400)]
)
def test_square_for_picks_the_smallest_square_at_least_the_size(size: int, side: int) -> None:
    assert STILL_SET.square_for(size).width == side


def test_an_animation_has_a_still() -> None:
    animated = VariantSet.of(
        variant("original", 300, frames=5), variant("thumb", 300, frames=5), variant("still", 300)
    )
    assert animated.animated
    assert animated.still.name == "still"
    assert [square.name for square in animated.squares] == ["thumb"]


def test_srcset_lists_each_square_once_smallest_first() -> None:
    assert STILL_SET.srcset(lambda key: f"https://cdn/{key}") == (
        "https://cdn/avatars/v1/thumb-64.webp 64w, "
        "https://cdn/avatars/v1/thumb-256.webp 256w, "
        "https://cdn/avatars/v1/thumb.webp 400w"
    )


def test_json_round_trip_keeps_order_and_fields() -> None:
    assert VariantSet.from_json(STILL_SET.to_json()) == STILL_SET
    assert list(STILL_SET.to_json()[0]) == [
        "name",
        "key",
        "width",
        "height",
        "bytes",
        "content_type",
        "frames",
    ]


def test_names_must_not_repeat() -> None:
    with pytest.raises(ValueError, match="repeat"):
        VariantSet.of(variant("thumb", 400), variant("thumb", 400))


def test_the_vocabulary_imports_nothing_from_the_app() -> None:
    tree = ast.parse(Path(variants_module.__file__).read_text())
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert not [name for name in imported if name == "app" or name.startswith("app.")]
