"""avatar placeholder and crop

The placeholder (BlurHash and dominant colour) served in the avatar document, and the crop box
the squares were cut with, so that `PATCH` and `avatar-service reprocess` can derive them again.
Rows made before this revision have no placeholder and no crop.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("avatars") as batch:
        batch.add_column(sa.Column("blurhash", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("dominant_color", sa.String(length=7), nullable=True))
        batch.add_column(sa.Column("crop", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("avatars") as batch:
        batch.drop_column("crop")
        batch.drop_column("dominant_color")
        batch.drop_column("blurhash")
