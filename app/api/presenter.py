"""The avatar document: the one place a row becomes the JSON clients read.

URLs are made here, per response, from stored keys: the store's own URL where it serves objects
(S3, a CDN), else this service's ``/media/`` route under the request's base URL. ``?inline=``
adds one image as a data: URI. Each document carries an ETag, and a client that has it gets 304.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request, Response

from app.api.caching import client_has, etag_of
from app.api.deps import BaseUrl, SettingsDep, StorageDep
from app.api.schemas import (
    AvatarBatch,
    AvatarPublic,
    InlineImage,
    PlaceholderPublic,
    SourcePublic,
    VariantPublic,
)
from app.core import errors
from app.core.config import Settings
from app.core.variants import (
    ANIMATED_TYPES,
    AVIF,
    EXTENSIONS,
    JPEG,
    ORIGINAL,
    STILL,
    WEBP,
    StoredVariant,
    parse_rendition,
    rendition_name,
)
from app.db.models import Avatar
from app.imaging.pipeline import PipelineOptions
from app.services.avatars import crop_source
from app.storage.base import Storage

MEDIA_PATH = "/media"


def object_url(storage: Storage, key: str, *, base_url: str) -> str:
    """Where a client fetches a stored object: from the store itself, else from ``/media/``."""
    return storage.object_url(key) or f"{base_url}{MEDIA_PATH}/{key}"


def build_document(avatar: Avatar, *, storage: Storage, base_url: str) -> AvatarPublic:
    """The avatar document, with URLs for ``base_url``."""
    variants = avatar.variants
    urls = {
        variant.key: object_url(storage, variant.key, base_url=base_url) for variant in variants
    }
    original = variants.original
    updated_at = avatar.updated_at
    if updated_at.tzinfo is None:  # SQLite hands back naive UTC
        updated_at = updated_at.replace(tzinfo=UTC)
    placeholder = (
        PlaceholderPublic(blurhash=avatar.blurhash, dominant_color=avatar.dominant_color)
        if avatar.blurhash and avatar.dominant_color
        else None
    )
    return AvatarPublic(
        user_id=avatar.user_id,
        version=avatar.version,
        updated_at=updated_at,
        avatar_url=urls[original.key],
        avatar_thumb_url=urls[variants.thumb.key],
        avatar_still_url=urls[variants.still.key],
        srcset=variants.srcset(urls.__getitem__),
        animated=variants.animated,
        width=original.width,
        height=original.height,
        crop=list(avatar.crop) if avatar.crop else _centre_square(original),
        content_type=original.content_type,
        bytes=original.bytes,
        # Renditions made on request are reached through ``sources``: the document stays the
        # same (and its ETag too) however many have been made.
        variants=[
            _variant(variant, urls[variant.key])
            for variant in variants
            if parse_rendition(variant.name) is None
        ],
        metadata_removed=list(avatar.metadata_removed or []),
        orientation_applied=avatar.orientation_applied or 1,
        sources=picture_sources(avatar, urls=urls, base_url=base_url),
        placeholder=placeholder,
        crop_source=crop_source(avatar),
    )


def build_batch(
    requested: Mapping[str, str],
    avatars: Mapping[str, Avatar],
    *,
    storage: Storage,
    base_url: str,
) -> AvatarBatch:
    """The documents of many users: ``requested`` maps each id as the client sent it to its
    canonical form, in the client's order; ``avatars`` holds the rows found, by canonical id.
    Each member is what ``build_document`` makes, or None for a user without an avatar."""
    documents = {
        user_id: build_document(avatar, storage=storage, base_url=base_url)
        for user_id, avatar in avatars.items()
    }
    return AvatarBatch(
        avatars={sent: documents.get(canonical) for sent, canonical in requested.items()}
    )


REDUCED_MOTION_MEDIA = "(prefers-reduced-motion: reduce)"


def picture_sources(avatar: Avatar, *, urls: dict[str, str], base_url: str) -> list[SourcePublic]:
    """``<picture>`` sources of the squares' sides: AVIF, WebP, JPEG (an animation's stills
    first, for reduced motion). An upload's own square is its stored object; any other is the
    rendition's versioned URL, which makes it on first request (its bytes never change)."""
    variants = avatar.variants
    sides = [square.width for square in variants.squares]
    kinds: list[tuple[str, bool, str | None]] = [
        (AVIF, False, None),
        (WEBP, False, None),
        (JPEG, True, None),
    ]
    if variants.animated:
        stills = [(AVIF, True, REDUCED_MOTION_MEDIA), (WEBP, True, REDUCED_MOTION_MEDIA)]
        kinds = stills + kinds
    sources = []
    for content_type, still, media in kinds:
        entries = []
        for side in sides:
            stored = variants.rendition(content_type, side, still=still)
            if stored is not None and parse_rendition(stored.name) is None:
                url = urls[stored.key]
            else:
                url = rendition_url(avatar, content_type, side, still=still, base_url=base_url)
            entries.append(f"{url} {side}w")
        sources.append(SourcePublic(type=content_type, srcset=", ".join(entries), media=media))
    return sources


def rendition_url(
    avatar: Avatar, content_type: str, side: int, *, still: bool, base_url: str
) -> str:
    """``/avatars/{user_id}/{version}/{name}``: one rendition of this version."""
    moving_format = avatar.variants.animated and content_type in ANIMATED_TYPES
    name = rendition_name(content_type, side, still=still and moving_format)
    user = quote(avatar.user_id, safe="")
    return f"{base_url}/avatars/{user}/{avatar.version}/{name}.{EXTENSIONS[content_type]}"


def _variant(variant: StoredVariant, url: str) -> VariantPublic:
    return VariantPublic(
        name=variant.name,
        url=url,
        width=variant.width,
        height=variant.height,
        bytes=variant.bytes,
        content_type=variant.content_type,
        frames=variant.frames,
    )


def _centre_square(original: StoredVariant) -> list[int]:
    side = min(original.width, original.height)
    return [(original.width - side) // 2, (original.height - side) // 2, side, side]


def check_inline_name(name: str | None, options: PipelineOptions) -> None:
    """Refuse, before any work, a variant name no avatar made with these settings can have."""
    if name is None:
        return
    known = [ORIGINAL, *(square for square, _side in options.squares()), STILL]
    if name not in known:
        raise errors.UnknownVariant(f"No variant {name!r}; avatars have: {', '.join(known)}.")


async def inline_image(
    avatar: Avatar, name: str, *, storage: Storage, settings: Settings
) -> InlineImage:
    """One of the avatar's images as a data: URI, if it is small enough."""
    variant = avatar.variants.get(name)
    if variant is None:
        names = ", ".join(avatar.variants.names)
        raise errors.UnknownVariant(f"No variant {name!r}; this avatar has: {names}.")
    if variant.bytes > settings.inline_max_bytes:
        raise errors.InlineTooLarge(
            f"The {name!r} image is {variant.bytes} bytes; at most "
            f"{settings.inline_max_bytes} are inlined. Use a smaller variant or its URL."
        )
    try:
        data = await storage.get(variant.key)
    except FileNotFoundError:
        raise errors.StorageUnavailable("A stored file is missing.") from None
    encoded = base64.b64encode(data).decode("ascii")
    return InlineImage(
        variant=name, data_uri=f"data:{variant.content_type};base64,{encoded}", bytes=len(data)
    )


@dataclass(frozen=True)
class DocumentWriter:
    """Renders an avatar document for this request: URLs for its base, ``?inline``, an ETag,
    and 304 when the client has the document already."""

    request: Request
    storage: Storage
    settings: Settings
    base_url: str

    async def __call__(
        self,
        avatar: Avatar,
        *,
        inline: str | None,
        public: bool,
        status_code: int = 200,
        committed: bool = False,
    ) -> Response:
        """``committed``: the request has changed the avatar already, so nothing may turn its
        answer into an error any more: an inline image that cannot be given is left out, and
        ``inline_omitted`` says why."""
        document = build_document(avatar, storage=self.storage, base_url=self.base_url)
        if inline is not None:
            try:
                document.inline = await inline_image(
                    avatar, inline, storage=self.storage, settings=self.settings
                )
            except (errors.InvalidRequest, errors.ServiceUnavailable) as exc:
                if not committed:
                    raise
                document.inline_omitted = f"{exc.code}: {exc.detail}"
        body = document.model_dump_json().encode()
        etag = etag_of(body)
        headers = {
            "ETag": etag,
            # Revalidate every time (cheap with If-None-Match): the avatar may change any time.
            "Cache-Control": ("public" if public else "private") + ", no-cache",
        }
        if status_code == 200 and client_has(self.request, etag):
            return Response(status_code=304, headers=headers)
        return Response(
            body, status_code=status_code, media_type="application/json", headers=headers
        )


async def get_document_writer(
    request: Request, storage: StorageDep, settings: SettingsDep, base_url: BaseUrl
) -> DocumentWriter:
    return DocumentWriter(request, storage, settings, base_url)


DocumentDep = Annotated[DocumentWriter, Depends(get_document_writer)]
