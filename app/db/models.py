"""Database rows hold storage keys and sizes, never URLs: URLs are built per response."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class Avatar(Base):
    """A user's current avatar: one row per user, replaced by each new upload."""

    __tablename__ = "avatars"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    # A fresh random token per upload; every storage key of the upload contains it.
    version: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source_format: Mapped[str] = mapped_column(String(16))
    # [{"name", "key", "width", "height", "bytes", "content_type"}, ...]; "original" first.
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # What the pipeline removed from the upload ("exif.gps", "xmp", "icc->srgb", ...) and the
    # EXIF orientation it applied (1 = none).
    metadata_removed: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    orientation_applied: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Placeholder for clients (BlurHash, "#rrggbb"), and the crop box [x, y, w, h] in pixels of
    # the stored original that the squares were cut from (None: its centre square).
    blurhash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dominant_color: Mapped[str | None] = mapped_column(String(7), nullable=True)
    crop: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    # What chose the crop: "face", "content", "centre" (proposed at upload) or "client" (the
    # upload's or PATCH's crop). None on rows made before it was recorded.
    crop_source: Mapped[str | None] = mapped_column(String(8), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def keys(self) -> list[str]:
        return [variant["key"] for variant in self.variants]

    def variant(self, name: str) -> dict[str, Any]:
        for variant in self.variants:
            if variant["name"] == name:
                return variant
        raise KeyError(name)
