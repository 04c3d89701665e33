"""One settings class for the whole service, read from ``AVATAR_*`` variables and ``.env``."""

from __future__ import annotations

import json
import os
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024

# Input types the image pipeline can read; HEIF and AVIF are off unless listed.
ImageFormat = Literal["JPEG", "PNG", "GIF", "WEBP", "HEIF", "AVIF"]

SUPPORTED_ALGORITHMS = {"HS256", "RS256", "ES256"}

# Secrets shorter than this are refused in production: HS256 wants at least 256 bits.
MIN_SECRET_BYTES = 32

S3_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*")


class ConfigurationError(RuntimeError):
    """The settings cannot run a service; the message says which one and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AVATAR_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
    )

    env: Literal["development", "production"] = "development"
    # `avatar-service serve`: address, port, server processes, and how long SIGTERM waits for
    # in-flight requests before the process stops.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    processes: int = Field(default=1, ge=1)
    shutdown_timeout: float = Field(default=30.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: Path = Path("./data")
    database_url: str = ""
    # Seconds to connect to a database server, and for each statement.
    database_timeout: float = Field(default=10.0, gt=0)
    storage: Literal["local", "s3"] = "local"
    media_root: Path | None = None
    public_base_url: str = ""

    # S3 or an S3-compatible store (MinIO, R2, Ceph). Credentials come from boto3's standard
    # chain (environment, profile, instance role), never from these settings.
    s3_bucket: str = ""
    s3_region: str = ""
    s3_endpoint_url: str = ""
    s3_prefix: str = ""
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_public_base_url: str = ""
    # SigV4 presigned URLs live at most seven days.
    s3_presign_ttl: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    s3_connect_timeout: float = Field(default=2.0, gt=0)
    s3_read_timeout: float = Field(default=10.0, gt=0)
    s3_max_attempts: int = Field(default=3, ge=1, le=10)
    s3_max_connections: int = Field(default=10, gt=0)

    jwt_secret: str = ""
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["HS256", "RS256", "ES256"])
    # An identity provider's public key (PEM) or JWKS URL, for RS256/ES256 tokens.
    jwt_public_key: str = ""
    jwks_url: str = ""
    jwks_cache_seconds: int = Field(default=300, gt=0)
    # Shortest time between two JWKS fetches caused by tokens with an unknown key id.
    jwks_refresh_cooldown_seconds: float = Field(default=30.0, ge=0)
    jwt_issuer: str = ""
    jwt_audience: str = ""
    token_ttl_seconds: int = Field(default=3600, gt=0)

    # Uploads per user, as "N/second|minute|hour|day"; empty switches the limit off.
    rate_limit: str = "30/minute"
    # Redis shared by the replicas (rate limits); unset: each process keeps its own counts.
    redis_url: str = ""

    max_upload_bytes: int = Field(default=10 * MIB, gt=0)
    # `?inline=<variant>` adds a data: URI to the avatar document up to this many bytes.
    inline_max_bytes: int = Field(default=64 * 1024, gt=0)
    # Browser origins allowed to call the API (CORS), e.g. ["https://app.example.com"].
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # max-age of unversioned responses: /avatars/{user_id} images, redirects and defaults.
    avatar_max_age: int = Field(default=300, ge=0)
    # A body must keep arriving: at most this many seconds between chunks, and in all.
    body_idle_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=60.0, gt=0)
    max_dimension: int = Field(default=4096, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)
    thumbnail_size: int = Field(default=400, gt=0)
    # Image pipeline (app/imaging): more square sizes, the original's cap, animations, inputs.
    thumbnail_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [400, 256, 128, 64]
    )
    original_max_side: int = Field(default=2048, ge=0)
    max_frames: int = Field(default=200, gt=0)
    allowed_formats: Annotated[list[ImageFormat], NoDecode] = Field(
        default_factory=lambda: ["JPEG", "PNG", "GIF", "WEBP"]
    )
    # Uploads without a client crop: where the squares are cut. `face`: around the faces found,
    # else `content` (smartcrop's edges, saturation, skin), else the `centre`.
    auto_crop: Literal["face", "content", "centre"] = "face"
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    queue_size: int = Field(default=16, ge=0)

    @field_validator("thumbnail_sizes", "allowed_formats", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # "400,256,128" or a JSON list; HEIC and JPG are the common names of HEIF and JPEG.
        if isinstance(value, str):
            items = value.strip().strip("[]").replace('"', "").split(",")
            value = [item.strip() for item in items if item.strip()]
        if isinstance(value, list):
            aliases = {"HEIC": "HEIF", "JPG": "JPEG"}
            value = [aliases.get(v.upper(), v.upper()) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip().rstrip("/") for item in text.split(",") if item.strip()]
        return value

    @field_validator("thumbnail_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size <= 0 for size in value):
            raise ValueError("thumbnail sizes must be positive")
        return value

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'avatar.db'}"
        if self.media_root is None:
            self.media_root = self.data_dir / "media"
        self.public_base_url = self.public_base_url.rstrip("/")
        self.s3_public_base_url = self.s3_public_base_url.rstrip("/")
        self.s3_prefix = self.s3_prefix.strip("/")
        if self.s3_prefix:
            if not S3_PREFIX_PATTERN.fullmatch(self.s3_prefix) or ".." in self.s3_prefix:
                raise ValueError(
                    "AVATAR_S3_PREFIX must be folder names of letters, digits, '.', '_' or '-' "
                    "separated by '/'"
                )
            self.s3_prefix += "/"
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("AVATAR_S3_BUCKET must be set when AVATAR_STORAGE=s3")
        unknown = set(self.jwt_algorithms) - SUPPORTED_ALGORITHMS
        if unknown:
            raise ValueError(
                f"AVATAR_JWT_ALGORITHMS: unsupported {sorted(unknown)}; "
                f"choose from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        if self.rate_limit:
            from limits import parse_many

            try:
                parse_many(self.rate_limit)
            except ValueError:
                raise ValueError(
                    f"AVATAR_RATE_LIMIT {self.rate_limit!r} is not like '10/minute'"
                ) from None
        if self.env == "production":
            has_public_key = bool(self.jwt_public_key or self.jwks_url)
            if not self.jwt_secret and not has_public_key:
                raise ValueError(
                    "AVATAR_JWT_SECRET (or AVATAR_JWT_PUBLIC_KEY / AVATAR_JWKS_URL) must be set "
                    "when AVATAR_ENV=production (the generated development secret is never "
                    "used there)"
                )
            if self.jwt_secret and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"AVATAR_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes in production"
                )
        return self

    @property
    def media_path(self) -> Path:
        assert self.media_root is not None  # set by _derive_defaults
        return self.media_root

    @property
    def hs256_enabled(self) -> bool:
        """HS256 tokens are accepted: allowed, and a secret is set or may be generated."""
        return "HS256" in self.jwt_algorithms and bool(self.jwt_secret or self.env == "development")

    def signing_secret(self) -> str:
        """The HS256 secret: the configured one, or in development one generated once
        and kept in the data folder, so the server and ``avatar-service token`` agree."""
        if self.jwt_secret:
            return self.jwt_secret
        if self.env == "production":  # unreachable through the validator; kept as a guard
            raise ConfigurationError("AVATAR_JWT_SECRET is required in production")
        path = self.data_dir / "jwt-secret"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its secret
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(secret)
        return secret


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning validation errors into one readable ConfigurationError."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
