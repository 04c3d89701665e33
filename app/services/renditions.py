"""Renditions: an avatar's square at any ladder side, in AVIF, WebP, JPEG or PNG, moving or
still, derived on first request and kept.

A rendition the row does not have yet is made from the stored original (cut from the avatar's
crop) on a bounded image pool of its own (``rendition_pool``: the upload pool's size, never its
places, since anonymous clients cause this work), whose overflow is ``ServerBusy`` (503 +
Retry-After), and
stored under the version's immutable key; the request is answered then, and the rendition is
appended to the row behind it (``app.services.avatars.record_rendition``: the object first, the
row after, compensated), so an image read never waits for the database's write lock.
Concurrent first requests in this process for one rendition share one derivation until the row
has it; replicas that race on it write the same bytes under the same key.

The ladder bounds what an avatar can store: at most one object per ladder side (plus the
square's own side, for pictures smaller than a rung), format and motion.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.errors import AppError, StorageUnavailable
from app.core.metrics import Metrics
from app.core.variants import (
    ANIMATED_TYPES,
    FORMAT_OF,
    StoredVariant,
    ladder_side,
    rendition_name,
)
from app.db.models import Avatar
from app.imaging.pipeline import CropBox, PipelineOptions, derive_square, webp_has_alpha
from app.imaging.pool import JobRunner, WorkerPool
from app.services.avatars import record_rendition, store_rendition
from app.services.runtime import worker_pool
from app.storage.base import Storage

logger = logging.getLogger(__name__)

# Versions whose transparency is known (a few bytes each).
ALPHA_ENTRIES = 4096
# At shutdown, seconds to let renditions being recorded reach the row.
DRAIN_SECONDS = 5.0


def rendition_pool(settings: Settings, metrics: Metrics | None = None) -> WorkerPool:
    """The pool renditions are made on: as many workers and waiting places as the upload pool,
    and none of its places, so a flood of first requests (anyone can send them) never makes an
    upload a 503."""
    return worker_pool(settings, metrics=metrics)


def crop_box(avatar: Avatar) -> CropBox:
    """The square the avatar's squares are cut from, in pixels of the stored original."""
    if avatar.crop:
        return CropBox(*avatar.crop)
    original = avatar.variants.original
    side = min(original.width, original.height)
    return CropBox((original.width - side) // 2, (original.height - side) // 2, side, side)


def _retrieve(task: asyncio.Task[StoredVariant]) -> None:
    """Mark a derivation's failure as seen: its waiters had it, or none is left to."""
    if not task.cancelled():
        task.exception()


class Renditions:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        pool: JobRunner,
        options: PipelineOptions,
        ladder: Sequence[int],
        metrics: Metrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.storage = storage
        self.pool = pool
        self.options = options
        self.ladder = tuple(sorted(ladder))
        self.metrics = metrics
        # Per (version, name): the derivation, kept until the row has the rendition.
        self._inflight: dict[tuple[str, str], asyncio.Task[StoredVariant]] = {}
        self._recording: set[asyncio.Task[None]] = set()
        self._alpha: OrderedDict[str, bool] = OrderedDict()

    def side_for(self, avatar: Avatar, wanted: int) -> int:
        """The side ``?size=wanted`` is served at: the smallest ladder side at least ``wanted``,
        never above the avatar's square (nothing is upscaled)."""
        return ladder_side(self.ladder, wanted, largest=crop_box(avatar).width)

    def sides(self, avatar: Avatar) -> set[int]:
        """Every side a rendition of this avatar can have: the ladder's (capped at its square)
        and its upload squares'."""
        largest = crop_box(avatar).width
        ladder = {ladder_side(self.ladder, side, largest=largest) for side in self.ladder}
        return ladder | {square.width for square in avatar.variants.squares}

    def name_of(self, avatar: Avatar, content_type: str, side: int, *, still: bool) -> str:
        return rendition_name(content_type, side, still=self._still(avatar, content_type, still))

    @staticmethod
    def _still(avatar: Avatar, content_type: str, still: bool) -> bool:
        """Whether ``still`` tells one thing from another: only an animation has a still, and
        only in a format that moves."""
        return still and avatar.variants.animated and content_type in ANIMATED_TYPES

    async def has_alpha(self, avatar: Avatar) -> bool:
        """Whether the avatar's squares carry transparency (read from the smallest square's
        header, once per version)."""
        known = self._alpha.get(avatar.version)
        if known is not None:
            self._alpha.move_to_end(avatar.version)
            return known
        smallest = avatar.variants.squares[0]
        try:
            data = await self.storage.get(smallest.key)
        except FileNotFoundError:
            raise StorageUnavailable("A stored file is missing.") from None
        known = webp_has_alpha(data)
        self._alpha[avatar.version] = known
        while len(self._alpha) > ALPHA_ENTRIES:
            self._alpha.popitem(last=False)
        return known

    async def get(
        self, avatar: Avatar, content_type: str, side: int, *, still: bool
    ) -> StoredVariant:
        """The stored square of ``side`` px in ``content_type`` (``still``: an animation's first
        frame), derived and stored first if the row has none. ``AvatarChanged`` when the avatar
        was replaced or deleted meanwhile (read it again)."""
        still = still or content_type not in ANIMATED_TYPES
        existing = avatar.variants.rendition(content_type, side, still=still)
        if existing is not None:
            return existing
        key = (avatar.version, self.name_of(avatar, content_type, side, still=still))
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._derive(key, avatar, content_type, side, still=still))
            self._inflight[key] = task
            task.add_done_callback(_retrieve)
        # A client that goes away does not stop the derivation the others wait for.
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Let the renditions being recorded reach the row (at shutdown; tests)."""
        if self._recording:
            await asyncio.wait(set(self._recording), timeout=DRAIN_SECONDS)

    def _forget(self, key: tuple[str, str]) -> None:
        self._inflight.pop(key, None)

    async def _derive(
        self, key: tuple[str, str], avatar: Avatar, content_type: str, side: int, *, still: bool
    ) -> StoredVariant:
        try:
            try:
                original = await self.storage.get(avatar.variants.original.key)
            except FileNotFoundError:
                raise StorageUnavailable("The stored original is missing.") from None
            variant = await self.pool.run(
                derive_square,
                original,
                crop_box(avatar),
                side,
                content_type,
                still=still,
                options=self.options,
            )
            stored = await store_rendition(self.storage, avatar.version, variant)
        except BaseException:
            self._forget(key)
            raise
        if self.metrics is not None:
            self.metrics.renditions.labels(format=FORMAT_OF[content_type]).inc()
        recording = asyncio.ensure_future(self._record(avatar, stored))
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)
        recording.add_done_callback(lambda _done: self._forget(key))
        return stored

    async def _record(self, avatar: Avatar, stored: StoredVariant) -> None:
        try:
            await record_rendition(
                sessions=self.sessions,
                storage=self.storage,
                user_id=avatar.user_id,
                version=avatar.version,
                rendition=stored,
            )
        except AppError as exc:  # changed meanwhile (deleted again), or left to gc
            logger.info("rendition %s not recorded: %s", stored.key, exc.code)
