"""``Avatar.variants`` is a ``VariantSet`` in Python and the same JSON in the database as the
rows written before the type existed: no migration, old rows read as new ones."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from app.core.variants import StoredVariant, VariantSet
from app.db.models import Avatar
from app.db.session import create_engine, create_sessionmaker

# What the service stored before: ``vars()`` of its variant dataclass, through SQLAlchemy's JSON
# type (``json.dumps``), byte for byte.
ROW_JSON = (
    '[{"name": "original", "key": "avatars/0123abcd/original.webp", "width": 600, '
    '"height": 400, "bytes": 9000, "content_type": "image/webp", "frames": 1}, '
    '{"name": "thumb", "key": "avatars/0123abcd/thumb.webp", "width": 400, "height": 400, '
    '"bytes": 3000, "content_type": "image/webp", "frames": 1}, '
    '{"name": "thumb-64", "key": "avatars/0123abcd/thumb-64.webp", "width": 64, '
    '"height": 64, "bytes": 500, "content_type": "image/webp", "frames": 1}]'
)
EXPECTED = VariantSet.of(
    StoredVariant("original", "avatars/0123abcd/original.webp", 600, 400, 9000, "image/webp"),
    StoredVariant("thumb", "avatars/0123abcd/thumb.webp", 400, 400, 3000, "image/webp"),
    StoredVariant("thumb-64", "avatars/0123abcd/thumb-64.webp", 64, 64, 500, "image/webp"),
)
INSERT = text(
    "INSERT INTO avatars (user_id, version, width, height, source_format, variants, "
    "metadata_removed, orientation_applied, created_at, updated_at) VALUES "
    "(:user_id, '0123abcd', 600, 400, 'JPEG', :variants, '[]', 1, :now, :now)"
)


async def _raw_variants(engine, user_id: str) -> str:
    async with engine.connect() as connection:
        return await connection.scalar(
            text("SELECT CAST(variants AS TEXT) FROM avatars WHERE user_id = :user_id"),
            {"user_id": user_id},
        )


async def test_a_row_written_before_the_type_reads_as_a_variant_set(database_url) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            now = datetime.now(UTC)
            await connection.execute(INSERT, {"user_id": "old", "variants": ROW_JSON, "now": now})
            # The oldest rows have no "frames": they are stills.
            stills = ROW_JSON.replace(', "frames": 1', "")
            await connection.execute(INSERT, {"user_id": "older", "variants": stills, "now": now})
        async with create_sessionmaker(engine)() as session:
            old = await session.get(Avatar, "old")
            older = await session.get(Avatar, "older")
        assert old is not None and older is not None
        assert old.variants == EXPECTED
        assert older.variants == EXPECTED
        assert old.variants.thumb.key == "avatars/0123abcd/thumb.webp"
    finally:
        await engine.dispose()


async def test_a_variant_set_is_stored_as_the_same_json_bytes(database_url) -> None:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            session.add(
                Avatar(
                    user_id="new",
                    version="0123abcd",
                    width=600,
                    height=400,
                    source_format="JPEG",
                    variants=EXPECTED,
                )
            )
        assert await _raw_variants(engine, "new") == ROW_JSON
    finally:
        await engine.dispose()
