"""event outbox

The transactional outbox: ``outbox_events`` gets a row in the same transaction as each change of
an avatar; ``outbox_deliveries`` holds one row per event and target (webhook endpoint or CDN
purge) with its attempts, lease and outcome.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox_events",
        sa.Column("seq", SEQUENCE, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=True),
        sa.Column("previous_version", sa.String(length=32), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("routed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_outbox_events")),
        sa.UniqueConstraint("id", name=op.f("uq_outbox_events_id")),
    )
    op.create_index("ix_outbox_events_routed_at_seq", "outbox_events", ["routed_at", "seq"])
    op.create_index("ix_outbox_events_user_id_seq", "outbox_events", ["user_id", "seq"])
    op.create_table(
        "outbox_deliveries",
        sa.Column("id", SEQUENCE, primary_key=True, autoincrement=True),
        sa.Column("event_seq", SEQUENCE, nullable=False),
        sa.Column("target", sa.String(length=80), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_seq"],
            ["outbox_events.seq"],
            name=op.f("fk_outbox_deliveries_event_seq_outbox_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_deliveries")),
        sa.UniqueConstraint("event_seq", "target", name="uq_outbox_deliveries_event_seq_target"),
    )
    op.create_index(
        "ix_outbox_deliveries_status_next_attempt_at",
        "outbox_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "ix_outbox_deliveries_target_user_id_event_seq",
        "outbox_deliveries",
        ["target", "user_id", "event_seq"],
    )


def downgrade() -> None:
    op.drop_table("outbox_deliveries")
    op.drop_table("outbox_events")
