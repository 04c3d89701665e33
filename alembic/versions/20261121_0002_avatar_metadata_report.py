"""avatar metadata report

What an upload's pipeline removed (``metadata_removed``) and the EXIF orientation it applied
(``orientation_applied``), kept so that reads answer what the upload answered. Rows made before
this revision report nothing removed and orientation 1.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("avatars") as batch:
        batch.add_column(
            sa.Column("metadata_removed", sa.JSON(), nullable=False, server_default="[]")
        )
        batch.add_column(
            sa.Column("orientation_applied", sa.Integer(), nullable=False, server_default="1")
        )


def downgrade() -> None:
    with op.batch_alter_table("avatars") as batch:
        batch.drop_column("orientation_applied")
        batch.drop_column("metadata_removed")
