"""The avatar unit of work.

``replace_avatar`` (an upload) and ``recrop_avatar`` (new squares from the stored original)
work with an ``AvatarWrites`` (the database, the store, where image jobs run, the pipeline's
options) and decide the order of writes, the same for both:

    process (worker pool) -> put new objects -> commit the row -> delete the old objects

and the compensating action sits beside each step (``_put_variants``,
``_commit_or_compensate``): objects written before a failed commit are deleted again, so a
failed change leaves the previous avatar exactly as it was. Each row change inserts its event
(``app.services.events``) in the same transaction: no change without its event, and no event
without its change.
"""

from __future__ import annotations

import errno
import logging
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, replace
from typing import Any, cast, get_args

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import EventType
from app.core.errors import (
    AvatarChanged,
    AvatarNotFound,
    DatabaseUnavailable,
    InsufficientStorage,
    StorageUnavailable,
)
from app.core.variants import ORIGINAL, StoredVariant, VariantSet, object_key
from app.db.models import Avatar, utcnow
from app.db.reads import AvatarReads
from app.db.session import READ_ONLY
from app.imaging.autocrop import CropSource
from app.imaging.pipeline import (
    CropBox,
    PipelineOptions,
    ProcessedImage,
    Variant,
    process_image,
)
from app.imaging.pool import JobRunner
from app.services.events import outbox_event
from app.storage.base import Storage

logger = logging.getLogger(__name__)


class _Keep:
    """Marker: keep the crop the row has."""


class _Propose:
    """Marker: propose a crop from the stored original (faces, content, centre)."""


KEEP = _Keep()
PROPOSE = _Propose()

# A full disk or an exhausted quota: 507, not "the store is down" (503).
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})

# A first upload races other first uploads of the same user on the primary key; the loser
# retries as a replacement.
_ROW_ATTEMPTS = 3


@dataclass(frozen=True)
class AvatarWrites:
    """What a change to an avatar works with. ``Runtime.writes()`` makes one; a route passes
    the place in the image pool it reserved before it read the body as ``pool``."""

    sessions: async_sessionmaker[AsyncSession]
    storage: Storage
    pool: JobRunner
    options: PipelineOptions


async def replace_avatar(
    writes: AvatarWrites, *, user_id: str, upload: bytes, crop: CropBox | None = None
) -> Avatar:
    sessions, storage, options = writes.sessions, writes.storage, writes.options
    processed = await writes.pool.run(process_image, upload, options, crop=crop)

    version = uuid.uuid4().hex
    stored = await _put_variants(storage, version, processed.variants)
    fields = {
        "version": version,
        "width": processed.width,
        "height": processed.height,
        "source_format": processed.source_format,
        "variants": stored,
        "metadata_removed": list(processed.metadata_removed),
        "orientation_applied": processed.orientation,
        # The box the squares were cut from, in pixels of the stored original: proposed (the
        # original is the whole picture) or the centre of the client's crop (which made it).
        **_crop_fields(processed),
        **_placeholder_fields(processed),
        "updated_at": utcnow(),
    }
    avatar, old_keys = await _commit_or_compensate(
        storage,
        stored.keys,
        _swap_row(sessions, user_id, fields, event_type="avatar.updated"),
    )
    await delete_objects(storage, old_keys)
    return avatar


async def recrop_avatar(
    writes: AvatarWrites, *, user_id: str, crop: CropBox | None | _Keep | _Propose = KEEP
) -> Avatar:
    """Derive the squares (and the still of an animation) again from the stored original, cut
    from ``crop`` (in pixels of the original; None: its centre square; KEEP: the crop the row
    has; PROPOSE: the square ``options.auto_crop`` proposes, as at upload). The original itself
    is kept, so the crop can be changed again and again.

    The same order as an upload: new objects, then the row (only if no upload replaced the
    avatar meanwhile), then the old squares.
    """
    sessions, storage, options = writes.sessions, writes.storage, writes.options
    current = await get_avatar(sessions=sessions, user_id=user_id)
    box = _stored_crop(current) if isinstance(crop, _Keep) else crop
    original = current.variants.original
    try:
        data = await storage.get(original.key)
    except FileNotFoundError:
        # Most often an upload or a delete of the same avatar won the race and removed the
        # original after the row was read: that is a conflict (or a 404), not an outage.
        await _raise_if_changed(sessions, user_id, current.version)
        raise StorageUnavailable("The stored original is missing; upload again.") from None
    except Exception as exc:
        raise StorageUnavailable("The image store could not read the original.") from exc

    # The stored original is a WebP this service wrote, whatever uploads are allowed now. Only
    # PROPOSE asks for a proposal; without a box the squares are otherwise its centre.
    propose = isinstance(box, _Propose)
    derive_options = replace(
        options,
        formats=options.formats | {"WEBP"},
        auto_crop=options.auto_crop if propose else "centre",
    )
    given = None if isinstance(box, _Propose) else box
    processed = await writes.pool.run(process_image, data, derive_options, crop=given)
    version = uuid.uuid4().hex
    derived = [variant for variant in processed.variants if variant.name != ORIGINAL]
    stored = await _put_variants(storage, version, derived)
    if propose:
        crop_fields = _crop_fields(processed)
    elif isinstance(crop, _Keep):
        crop_fields = {"crop": list(given) if given else None, "crop_source": current.crop_source}
    else:  # PATCH: the client's box, or the centre the client asked for
        crop_fields = {"crop": list(given) if given else None, "crop_source": "client"}
    fields = {
        "version": version,
        "variants": VariantSet.of(original, *stored),
        **crop_fields,
        **_placeholder_fields(processed),
        "updated_at": utcnow(),
    }
    avatar, old_keys = await _commit_or_compensate(
        storage,
        stored.keys,
        _swap_row(
            sessions,
            user_id,
            fields,
            event_type="avatar.cropped",
            expected_version=current.version,
        ),
    )
    await delete_objects(storage, [key for key in old_keys if key != original.key])
    return avatar


async def _raise_if_changed(
    sessions: async_sessionmaker[AsyncSession], user_id: str, version: str
) -> None:
    """AvatarNotFound if the avatar is gone, AvatarChanged if it is no longer at ``version``."""
    if (await get_avatar(sessions=sessions, user_id=user_id)).version != version:
        raise AvatarChanged("The avatar changed meanwhile; try again.")


def _stored_crop(avatar: Avatar) -> CropBox | None:
    return CropBox(*avatar.crop) if avatar.crop else None


def _stored_source(avatar: Avatar) -> str | None:
    """What chose the row's crop; rows made before it was recorded: ``client`` when they have a
    crop (only PATCH stored one), else None (their squares are the original's centre)."""
    if avatar.crop_source:
        return avatar.crop_source
    return "client" if avatar.crop else None


def crop_source(avatar: Avatar) -> CropSource:
    """What chose the avatar's crop, for any row, old ones included."""
    stored = _stored_source(avatar)
    for source in get_args(CropSource):
        if stored == source:
            return cast(CropSource, source)
    return "centre"


def _crop_fields(processed: ProcessedImage) -> dict[str, Any]:
    crop = processed.crop
    return {"crop": list(crop) if crop else None, "crop_source": processed.crop_source}


def _placeholder_fields(processed: ProcessedImage) -> dict[str, str | None]:
    placeholder = processed.placeholder
    return {
        "blurhash": placeholder.blurhash if placeholder else None,
        "dominant_color": placeholder.dominant_color if placeholder else None,
    }


async def _put_variants(storage: Storage, version: str, variants: Iterable[Variant]) -> VariantSet:
    """Write each variant under a fresh key; on any failure delete what may have been written."""
    stored: list[StoredVariant] = []
    # A key counts as written as soon as its put is sent: a put that fails may still have stored
    # the object (its answer lost after the store did the work), so the compensation covers it.
    written: list[str] = []
    try:
        for variant in variants:
            key = object_key(version, variant.name, variant.content_type)
            written.append(key)
            await storage.put(key, variant.data, variant.content_type)
            stored.append(
                StoredVariant(
                    name=variant.name,
                    key=key,
                    width=variant.width,
                    height=variant.height,
                    bytes=len(variant.data),
                    content_type=variant.content_type,
                    frames=variant.frames,
                )
            )
    except Exception as exc:
        await delete_objects(storage, written)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise InsufficientStorage("The image store is full; nothing was kept.") from exc
        raise StorageUnavailable("The image store could not save the avatar.") from exc
    return VariantSet(tuple(stored))


async def _commit_or_compensate(
    storage: Storage, written: list[str], commit: Awaitable[tuple[Avatar, list[str]]]
) -> tuple[Avatar, list[str]]:
    """Run the row change; if it fails in any way, the objects just written are deleted."""
    try:
        return await commit
    except BaseException as exc:
        await delete_objects(storage, written)
        if isinstance(exc, SQLAlchemyError | OSError):
            raise DatabaseUnavailable("The avatar could not be saved; nothing changed.") from exc
        raise


async def _swap_row(
    sessions: async_sessionmaker[AsyncSession],
    user_id: str,
    fields: dict[str, Any],
    *,
    event_type: EventType = "avatar.updated",
    expected_version: str | None = None,
) -> tuple[Avatar, list[str]]:
    """Point the user's row at the new objects; return it and the keys it pointed at before.

    With ``expected_version``, the row must still be at that version (else AvatarChanged, or
    AvatarNotFound when it was deleted meanwhile).
    The change's ``event_type`` goes into the outbox in the same transaction.
    """
    for attempt in range(_ROW_ATTEMPTS):
        try:
            async with sessions() as session, session.begin():
                avatar = await _lock_avatar(session, user_id)
                if expected_version is not None:
                    if avatar is None:
                        raise AvatarNotFound("The avatar was deleted meanwhile.")
                    if avatar.version != expected_version:
                        raise AvatarChanged("The avatar changed meanwhile; try again.")
                old_keys = avatar.keys if avatar else []
                previous = avatar.version if avatar else None
                if avatar is None:
                    avatar = Avatar(user_id=user_id, **fields)
                    session.add(avatar)
                else:
                    for name, value in fields.items():
                        setattr(avatar, name, value)
                session.add(outbox_event(event_type, user_id, fields["version"], previous))
            return avatar, old_keys
        except IntegrityError:
            if attempt == _ROW_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def store_rendition(storage: Storage, version: str, variant: Variant) -> StoredVariant:
    """Write one rendition (a square derived later, ``app.services.renditions``) under the
    version's key; ``record_rendition`` then appends it to the row. Another process that
    derives the same rendition writes the same bytes under the same key."""
    (stored,) = await _put_variants(storage, version, [variant])
    return stored


async def record_rendition(
    *,
    sessions: async_sessionmaker[AsyncSession],
    storage: Storage,
    user_id: str,
    version: str,
    rendition: StoredVariant,
) -> None:
    """Append a stored rendition to the row, only while the row is still at ``version``:
    the write order of every change (the object first, then the row). An object the row
    cannot take (an upload, a crop change or a delete won the race: ``AvatarChanged``) is
    deleted again. When the database fails the object is left to ``gc``, which deletes it only
    if no row took it: another replica may have recorded the same key."""
    try:
        async with sessions() as session, session.begin():
            avatar = await _lock_avatar(session, user_id)
            if avatar is None or avatar.version != version:
                raise AvatarChanged("The avatar changed while a rendition was made.")
            if rendition.name not in avatar.variants:
                avatar.variants = avatar.variants.with_variant(rendition)
    except AvatarChanged:
        await delete_objects(storage, [rendition.key])
        raise
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable("The rendition could not be recorded.") from exc


async def get_avatar(*, sessions: async_sessionmaker[AsyncSession], user_id: str) -> Avatar:
    async with sessions() as session:
        await session.connection(**READ_ONLY)  # never waits for a writer's lock (SQLite)
        avatar = await session.get(Avatar, user_id)
    if avatar is None:
        raise AvatarNotFound("This user has no avatar.")
    return avatar


async def get_avatars(
    *, sessions: async_sessionmaker[AsyncSession], user_ids: Iterable[str]
) -> dict[str, Avatar]:
    """The avatars of ``user_ids`` (canonical ids) by user id, read in one query
    (``SELECT ... WHERE user_id IN (...)``); users without an avatar are left out."""
    wanted = sorted(set(user_ids))
    if not wanted:
        return {}
    statement = select(Avatar).where(Avatar.user_id.in_(wanted))
    async with sessions() as session:
        await session.connection(**READ_ONLY)  # never waits for a writer's lock (SQLite)
        return {avatar.user_id: avatar for avatar in await session.scalars(statement)}


async def read_avatar(*, reads: AvatarReads, user_id: str) -> Avatar:
    """The avatar as a reader sees it: one query, no transaction (``app.db.reads``)."""
    avatar = await reads.avatar(user_id)
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
        session.add(outbox_event("avatar.deleted", user_id, None, avatar.version))
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
