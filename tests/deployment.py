"""Helpers for the tests of deployment files (compose, Dockerfile, Kubernetes manifests)."""

from __future__ import annotations

import re

from app.core.config import Settings

CODE_SETTINGS = frozenset(f"AVATAR_{name.upper()}" for name in Settings.model_fields)


def unknown_settings(text: str, *, allowed: frozenset[str] = frozenset()) -> set[str]:
    """The ``AVATAR_*`` names in ``text`` that are no setting of the code (nor in ``allowed``)."""
    named = set(re.findall(r"\b(AVATAR_[A-Z0-9_]+)\b", text))
    return named - CODE_SETTINGS - allowed
