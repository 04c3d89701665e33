"""Column types that turn the rows' JSON into the app's own values and back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from app.core.variants import VariantSet


class VariantSetJSON(TypeDecorator[VariantSet]):
    """``Avatar.variants``: a ``VariantSet`` in Python, the same JSON list in the database as
    before the type existed (``StoredVariant.to_json``), so no row needs migrating."""

    impl = JSON
    cache_ok = True

    def process_bind_param(
        self, value: VariantSet | None, dialect: Dialect
    ) -> list[dict[str, Any]] | None:
        return None if value is None else value.to_json()

    def process_result_value(self, value: Any | None, dialect: Dialect) -> VariantSet | None:
        return None if value is None else VariantSet.from_json(value)
