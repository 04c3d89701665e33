"""The README's layout section matches the tree: every folder it names exists, and every
package under app/ (and every top-level folder of code) is named there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Layout:\n\n```\n(.*?)```", readme, re.S)
    assert block, "the README has no Layout: block"
    entries = {}
    for line in block.group(1).splitlines():
        path, _, what = line.partition(" ")
        entries[path.rstrip("/")] = what.strip()
    return entries


def test_every_folder_the_layout_names_exists() -> None:
    for path, what in layout().items():
        assert (ROOT / path).is_dir(), f"README layout names {path}/ ({what}), which is missing"
        assert what, f"README layout says nothing about {path}/"


def test_every_package_is_in_the_layout() -> None:
    named = set(layout())
    packages = {
        path.parent.relative_to(ROOT).as_posix()
        for path in (ROOT / "app").rglob("*.py")
        if path.parent != ROOT / "app" and "__pycache__" not in path.parts
    }
    folders = {"alembic", "tests", "cluster", "deploy", "benchmarks"}
    missing = sorted((packages | folders) - named)
    assert not missing, f"README layout leaves out {missing}"
