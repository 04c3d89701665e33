"""avatar crop source

What chose the box the squares were cut from: ``face``, ``content`` or ``centre`` (proposed at
upload) or ``client``. Rows made before this revision keep NULL: they read as ``client`` when
they have a crop (only ``PATCH`` stored one) and ``centre`` otherwise, with the centre square of
the original as their crop.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("avatars") as batch:
        batch.add_column(sa.Column("crop_source", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("avatars") as batch:
        batch.drop_column("crop_source")
