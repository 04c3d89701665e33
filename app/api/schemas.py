"""HTTP shapes: the models of the JSON the API speaks (filled in by ``app.api.presenter``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """RFC 9457 problem details, with the service's stable ``code``."""

    type: str = Field(examples=["urn:avatar-service:problem:too_many_pixels"])
    title: str = Field(examples=["Too many pixels"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["The image has 16384x16384 = 268435456 pixels."])
    code: str = Field(examples=["too_many_pixels"])


class VariantPublic(BaseModel):
    name: str
    url: str
    width: int
    height: int
    bytes: int
    content_type: str
    frames: int = Field(default=1, description="More than 1: an animated WebP.")


class PlaceholderPublic(BaseModel):
    blurhash: str = Field(
        examples=["UqKFUx6XAzJro2a}a}a}fQfQfQfQo2a}a}a}"],
        description="A BlurHash (4x4 components) of the square avatar, to paint while loading.",
    )
    dominant_color: str = Field(examples=["#c81e1e"], description="The dominant colour, #rrggbb.")


class InlineImage(BaseModel):
    variant: str = Field(examples=["thumb"])
    data_uri: str = Field(examples=["data:image/webp;base64,UklGR..."])
    bytes: int


class SourcePublic(BaseModel):
    """One ``<source>`` of a ``<picture>``: its attributes, ready to write."""

    type: str = Field(examples=["image/avif"], description="The `type` attribute.")
    srcset: str = Field(
        description="The squares in this format (`url 64w, url 128w, ...`). A rendition not "
        "stored yet is made on its first request.",
        examples=["https://.../avatars/alice/0a1b.../avif-64.avif 64w, ..."],
    )
    media: str | None = Field(
        default=None,
        examples=["(prefers-reduced-motion: reduce)"],
        description="The `media` attribute: set on an animated avatar's still sources.",
    )


class AvatarPublic(BaseModel):
    user_id: str
    avatar_url: str
    avatar_thumb_url: str
    avatar_still_url: str = Field(
        description="A still picture for reduced-motion settings: the first frame of an "
        "animated avatar, else the same as avatar_thumb_url."
    )
    animated: bool
    width: int
    height: int
    content_type: str
    bytes: int
    version: str
    variants: list[VariantPublic]
    metadata_removed: list[str] = Field(
        examples=[["exif.gps", "exif.camera", "xmp", "iptc", "icc->srgb"]],
        description="What the upload carried that no stored file does.",
    )
    orientation_applied: int = Field(
        examples=[6], description="The EXIF orientation turned into pixels (1 = none)."
    )
    srcset: str = Field(
        description="The square sizes as an HTML srcset (`url 64w, url 128w, ...`).",
        examples=["https://.../thumb-64.webp 64w, https://.../thumb.webp 400w"],
    )
    sources: list[SourcePublic] = Field(
        default_factory=list,
        description="`<picture>` sources, best format first: AVIF, WebP, then JPEG (which an "
        "`<img srcset>` can take); an animated avatar's stills come first, for "
        "`(prefers-reduced-motion: reduce)`.",
    )
    placeholder: PlaceholderPublic | None = None
    crop: list[int] | None = Field(
        default=None,
        examples=[[412, 96, 1024, 1024]],
        description="The box [x, y, width, height] of the original the squares were cut from "
        "(their centre square, when the box is not square).",
    )
    crop_source: Literal["face", "content", "centre", "client"] = Field(
        default="centre",
        description="What chose the box: `face` (around the faces found at upload), `content` "
        "(no face: edges, saturation, skin), `centre`, or `client` (a crop sent with the upload "
        "or by PATCH). Face positions themselves are never stored or returned.",
    )
    inline: InlineImage | None = Field(
        default=None, description="With ?inline=<variant>: that variant as a data: URI."
    )
    inline_omitted: str | None = Field(
        default=None,
        description="On an upload or a crop change with ?inline=<variant>, when that image could "
        "not be inlined (over AVATAR_INLINE_MAX_BYTES, or `still` of an avatar that is not "
        "animated): the error code and why. The change itself is done.",
        examples=["inline_too_large: The 'original' image is 81234 bytes; at most 65536 ..."],
    )
    updated_at: datetime


class AvatarBatch(BaseModel):
    """The documents of many users at once (``GET /avatars``, ``POST /avatars/lookup``)."""

    avatars: dict[str, AvatarPublic | None] = Field(
        description="One member per distinct user id asked for, in the order of the request, "
        "keyed by the id as sent: its document (exactly what `GET /users/{user_id}/avatar` "
        "answers), or null when the user has no avatar.",
    )


class HealthStatus(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
    # With /readyz?deep=1: each bundled sample's expected and actual outcome.
    images: dict[str, dict[str, Any]] | None = None
