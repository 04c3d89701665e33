"""Database rows hold storage keys and sizes, never URLs: URLs are built per response."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.core.variants import VariantSet
from app.db.base import Base
from app.db.types import VariantSetJSON


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
    # Stored as a JSON list of objects, "original" first (app.core.variants).
    variants: Mapped[VariantSet] = mapped_column(VariantSetJSON)
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
        return self.variants.keys


# SQLite numbers rows itself only for an INTEGER PRIMARY KEY.
SEQUENCE = BigInteger().with_variant(Integer(), "sqlite")


class OutboxEvent(Base):
    """A change of an avatar, inserted in the transaction that changes the row (the outbox).

    ``seq`` orders the events; one user's changes are serialized by the row lock, so their
    events are numbered in the order they happened. ``routed_at`` is set once a dispatcher made
    the deliveries for the endpoints configured then.
    """

    __tablename__ = "outbox_events"

    seq: Mapped[int] = mapped_column(SEQUENCE, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    previous_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    routed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_outbox_events_routed_at_seq", "routed_at", "seq"),
        Index("ix_outbox_events_user_id_seq", "user_id", "seq"),
    )


class OutboxDelivery(Base):
    """One event for one target (a webhook endpoint, or the CDN purge): retried until it is
    ``delivered`` or ``dead``. A claim is a lease (``leased_until``), so a dispatcher that dies
    mid-request leaves the delivery to the next one once the lease ends."""

    __tablename__ = "outbox_deliveries"

    id: Mapped[int] = mapped_column(SEQUENCE, primary_key=True, autoincrement=True)
    event_seq: Mapped[int] = mapped_column(
        SEQUENCE, ForeignKey("outbox_events.seq", ondelete="CASCADE")
    )
    target: Mapped[str] = mapped_column(String(80))
    # The event's user, here too: a user's deliveries to one target go out in event order.
    user_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        UniqueConstraint("event_seq", "target", name="uq_outbox_deliveries_event_seq_target"),
        Index("ix_outbox_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_deliveries_target_user_id_event_seq", "target", "user_id", "event_seq"),
    )
