"""One settings class for the whole service, read from ``AVATAR_*`` variables and ``.env``."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024

# Secrets shorter than this are refused in production: HS256 wants at least 256 bits.
MIN_SECRET_BYTES = 32


class ConfigurationError(RuntimeError):
    """The settings cannot run a service; the message says which one and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AVATAR_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("./data")
    database_url: str = ""
    storage: Literal["local"] = "local"
    media_root: Path | None = None
    public_base_url: str = ""

    jwt_secret: str = ""
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    token_ttl_seconds: int = Field(default=3600, gt=0)

    max_upload_bytes: int = Field(default=10 * MIB, gt=0)
    max_dimension: int = Field(default=4096, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)
    thumbnail_size: int = Field(default=400, gt=0)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    queue_size: int = Field(default=16, ge=0)

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'avatar.db'}"
        if self.media_root is None:
            self.media_root = self.data_dir / "media"
        self.public_base_url = self.public_base_url.rstrip("/")
        if self.env == "production":
            if not self.jwt_secret:
                raise ValueError(
                    "AVATAR_JWT_SECRET must be set when AVATAR_ENV=production "
                    "(the generated development secret is never used there)"
                )
            if len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"AVATAR_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes in production"
                )
        return self

    @property
    def media_path(self) -> Path:
        assert self.media_root is not None  # set by _derive_defaults
        return self.media_root

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
