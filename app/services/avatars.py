"""The avatar unit of work.

``replace_avatar`` is the one place where the order of writes is decided:

    process (worker pool) -> put new objects -> commit the row -> delete the old objects

and the compensating action sits beside each step: objects written before a failed commit are
deleted again, so a failed upload leaves the previous avatar exactly as it was.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import AvatarNotFound, DatabaseUnavailable, StorageUnavailableError
from app.db.models import Avatar, utcnow
from app.imaging.pipeline import CropBox, PipelineOptions, ProcessedImage, process_image
from app.imaging.pool import WorkerPool
from app.storage.base import Storage

logger = logging.getLogger(__name__)

# A first upload races other first uploads of the same user on the primary key; the loser
# retries as a replacement.
_ROW_ATTEMPTS = 3


@dataclass(frozen=True)
class StoredVariant:
    name: str
    key: str
    width: int
    height: int
    bytes: int
    content_type: str
    frames: int = 1


def object_key(version: str, name: str) -> str:
    """Keys come from the service alone: a fresh random version, never a client's file name."""
    return f"avatars/{version}/{name}.webp"


async def replace_avatar(
    *,
    sessions: async_sessionmaker[AsyncSession],
    storage: Storage,
    pool: WorkerPool,
    options: PipelineOptions,
    user_id: str,
    upload: bytes,
    crop: CropBox | None = None,
) -> Avatar:
    processed = await pool.run(process_image, upload, options, crop=crop)

    version = uuid.uuid4().hex
    variants = [
        StoredVariant(
            name=variant.name,
            key=object_key(version, variant.name),
            width=variant.width,
            height=variant.height,
            bytes=len(variant.data),
            content_type=variant.content_type,
            frames=variant.frames,
        )
        for variant in processed.variants
    ]
    # A key counts as written as soon as its put is sent: a put that fails may still have stored
    # the object (its answer lost after the store did the work), so the compensation covers it.
    written: list[str] = []
    try:
        for stored, variant in zip(variants, processed.variants, strict=True):
            written.append(stored.key)
            await storage.put(stored.key, variant.data, stored.content_type)
    except Exception as exc:
        await delete_objects(storage, written)
        raise StorageUnavailableError("The image store could not save the avatar.") from exc

    try:
        avatar, old_keys = await _swap_row(sessions, user_id, version, processed, variants)
    except BaseException as exc:
        await delete_objects(storage, written)
        if isinstance(exc, SQLAlchemyError | OSError):
            raise DatabaseUnavailable("The avatar could not be saved; nothing changed.") from exc
        raise

    await delete_objects(storage, old_keys)
    return avatar


async def _swap_row(
    sessions: async_sessionmaker[AsyncSession],
    user_id: str,
    version: str,
    processed: ProcessedImage,
    variants: list[StoredVariant],
) -> tuple[Avatar, list[str]]:
    """Point the user's row at the new objects; return it and the keys it pointed at before."""
    fields = {
        "version": version,
        "width": processed.width,
        "height": processed.height,
        "source_format": processed.source_format,
        "variants": [vars(variant) for variant in variants],
        "metadata_removed": list(processed.metadata_removed),
        "orientation_applied": processed.orientation,
        "updated_at": utcnow(),
    }
    for attempt in range(_ROW_ATTEMPTS):
        try:
            async with sessions() as session, session.begin():
                avatar = await _lock_avatar(session, user_id)
                old_keys = avatar.keys if avatar else []
                if avatar is None:
                    avatar = Avatar(user_id=user_id, **fields)
                    session.add(avatar)
                else:
                    for name, value in fields.items():
                        setattr(avatar, name, value)
            return avatar, old_keys
        except IntegrityError:
            if attempt == _ROW_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def get_avatar(*, sessions: async_sessionmaker[AsyncSession], user_id: str) -> Avatar:
    async with sessions() as session:
        avatar = await session.get(Avatar, user_id)
    if avatar is None:
        raise AvatarNotFound("This user has no avatar.")
    return avatar


async def delete_avatar(
    *, sessions: async_sessionmaker[AsyncSession], storage: Storage, user_id: str
) -> None:
    """Delete the row first, then the objects: a failure in between leaves orphans, never a
    row pointing at missing files."""
    async with sessions() as session, session.begin():
        avatar = await _lock_avatar(session, user_id)
        if avatar is None:
            raise AvatarNotFound("This user has no avatar.")
        keys = avatar.keys
        await session.delete(avatar)
    await delete_objects(storage, keys)


async def _lock_avatar(session: AsyncSession, user_id: str) -> Avatar | None:
    statement = select(Avatar).where(Avatar.user_id == user_id).with_for_update()
    return await session.scalar(statement)


async def delete_objects(storage: Storage, keys: Iterable[str]) -> None:
    """Best effort: an object that cannot be deleted now is an orphan for the reconciler."""
    for key in keys:
        try:
            await storage.delete(key)
        except Exception:
            logger.warning("could not delete object %s; left for the reconciler", key)
