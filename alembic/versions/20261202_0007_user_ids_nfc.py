"""user ids in NFC

User ids are NFC-normalised at the token and in paths (``normalize_user_id``); rows stored
before that rule under another spelling of the same id could no longer be reached. Each such
row takes the NFC spelling. Where both spellings have a row, the one changed last is kept and
the other removed; its objects are then unreferenced and ``avatar-service gc`` removes them.
Ids the rule refuses for other reasons (a ``/``, control characters) are left as they are:
nothing can name them, and their owners' tokens are refused.

The old spellings are not restored on downgrade: they are the same users.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

avatars = sa.table(
    "avatars",
    sa.column("user_id", sa.String),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(avatars.c.user_id, avatars.c.updated_at)).all()
    changed = {user_id: updated_at for user_id, updated_at in rows}
    for user_id, updated_at in rows:
        spelled = unicodedata.normalize("NFC", user_id)
        if spelled == user_id:
            continue
        if spelled in changed and changed[spelled] >= updated_at:
            connection.execute(sa.delete(avatars).where(avatars.c.user_id == user_id))
            continue
        if spelled in changed:
            connection.execute(sa.delete(avatars).where(avatars.c.user_id == spelled))
        connection.execute(
            sa.update(avatars).where(avatars.c.user_id == user_id).values(user_id=spelled)
        )
        changed[spelled] = updated_at
        del changed[user_id]


def downgrade() -> None:
    pass
