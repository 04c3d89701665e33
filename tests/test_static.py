"""Static checks run with the suite, so CI (`make test`) fails on them: mypy, strict for app/
(its settings in pyproject.toml), and ruff's rules. `make lint` runs the same tools, plus the
format check, for the inner loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = ["app", "tests", "alembic", "benchmarks", "cluster"]

pytestmark = pytest.mark.server  # child processes: left out of `make test-fast`


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_mypy_finds_nothing() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr
