"""What the service accepts, so clients can check a file before they upload it."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from app.api.deps import PipelineOptionsDep, SettingsDep
from app.api.upload import base64_limit
from app.core.errors import all_error_classes
from app.core.variants import FORMATS

router = APIRouter(tags=["avatars"])

MIME_TYPES = {
    "JPEG": ["image/jpeg"],
    "PNG": ["image/png", "image/apng"],
    "GIF": ["image/gif"],
    "WEBP": ["image/webp"],
    "HEIF": ["image/heic", "image/heif"],
    "AVIF": ["image/avif"],
}


class ErrorCode(BaseModel):
    code: str
    status: int
    title: str


class Constraints(BaseModel):
    max_upload_bytes: int = Field(description="Largest file accepted.")
    max_base64_length: int = Field(description="Longest `image_base64` text of a JSON upload.")
    max_dimension: int = Field(description="Largest width or height, in pixels.")
    max_pixels: int = Field(description="Largest width x height (x frames for animations).")
    formats: list[str] = Field(examples=[["JPEG", "PNG", "GIF", "WEBP"]])
    content_types: list[str] = Field(
        description="The formats' media types (informational: the type is read from the content)."
    )
    animation: dict[str, object] = Field(
        description="Animated GIF/WebP/APNG are kept as animated WebP within these limits."
    )
    original_max_side: int = Field(description="Longest side of the stored original (0: none).")
    sizes: list[int] = Field(description="Sides of the square variants, largest first.")
    thumbnail_size: int = Field(description="Side of `avatar_thumb_url`.")
    output_content_type: str
    size_ladder: list[int] = Field(
        default_factory=list,
        description="Sides `/avatars/{user_id}?size=N` serves (the smallest at least N).",
    )
    rendition_content_types: list[str] = Field(
        default_factory=list,
        description="What `/avatars/{user_id}` answers in, by `Accept` or `?format=`.",
    )
    inline_max_bytes: int
    rate_limit: str | None = Field(description="Uploads per user, e.g. `30/minute`.")
    error_codes: list[ErrorCode]


@router.get(
    "/avatar/constraints",
    response_model=Constraints,
    summary="Limits, formats, sizes and error codes, to validate before uploading",
)
async def read_constraints(
    settings: SettingsDep, options: PipelineOptionsDep, response: Response
) -> Constraints:
    response.headers["Cache-Control"] = "public, max-age=300"
    formats = [name for name in MIME_TYPES if name in options.formats]
    return Constraints(
        max_upload_bytes=settings.max_upload_bytes,
        max_base64_length=base64_limit(settings.max_upload_bytes),
        max_dimension=options.max_dimension,
        max_pixels=options.max_pixels,
        formats=formats,
        content_types=[mime for name in formats for mime in MIME_TYPES[name]],
        animation={
            "kept": True,
            "output": "animated WebP, durations and loop kept",
            "max_frames": options.max_frames,
            "pixels_counted_across_frames": True,
            "still_variant": "still",
        },
        original_max_side=options.original_max_side,
        sizes=[side for _name, side in options.squares()],
        thumbnail_size=options.thumbnail_size,
        output_content_type="image/webp",
        size_ladder=list(settings.size_ladder),
        rendition_content_types=list(FORMATS.values()),
        inline_max_bytes=settings.inline_max_bytes,
        rate_limit=settings.rate_limit or None,
        error_codes=sorted(
            (
                ErrorCode(code=cls.code, status=cls.status, title=cls.title)
                for cls in all_error_classes()
                if cls.code != "invalid_image"
            ),
            key=lambda error: (error.status, error.code),
        ),
    )
