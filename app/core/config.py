"""One settings class for the whole service, read from ``AVATAR_*`` variables and ``.env``."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

MIB = 1024 * 1024

# Input types the image pipeline can read; HEIF and AVIF are off unless listed.
ImageFormat = Literal["JPEG", "PNG", "GIF", "WEBP", "HEIF", "AVIF"]

SUPPORTED_ALGORITHMS = {"HS256", "RS256", "ES256"}

# The image pipeline's defaults, once: the settings below and ``PipelineOptions``
# (app/imaging/pipeline.py) both start from these.
DEFAULT_MAX_PIXELS = 50_000_000  # per still image, and across all frames of an animation
DEFAULT_MAX_DIMENSION = 4096
DEFAULT_MAX_FRAMES = 200
DEFAULT_THUMBNAIL_SIZE = 400  # the main square, "thumb"
DEFAULT_THUMBNAIL_SIZES = (400, 256, 128, 64)  # every square; the others are "thumb-<side>"
DEFAULT_ORIGINAL_MAX_SIDE = 2048  # 0 keeps the full resolution
DEFAULT_FORMATS: tuple[ImageFormat, ...] = ("JPEG", "PNG", "GIF", "WEBP")
# The sides `?size=N` is served at (the smallest at least N): renditions are derived on first
# request, so the ladder bounds what one avatar can store.
DEFAULT_SIZE_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 400, 512, 1024)
MAX_LADDER_RUNGS = 24
AutoCropMode = Literal["face", "content", "centre"]
DEFAULT_AUTO_CROP: AutoCropMode = "face"

# Secrets shorter than this are refused in production: HS256 wants at least 256 bits.
MIN_SECRET_BYTES = 32

S3_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*")


# An empty variable (`AVATAR_X=`, as .env.example lists the optional ones) means "the default"
# for every setting but these, where empty is a value of its own: `AVATAR_RATE_LIMIT=` is no limit.
EMPTY_IS_A_VALUE = ("rate_limit",)


class ConfigurationError(RuntimeError):
    """The settings cannot run a service; the message says which one and why."""


# What the outbox tells receivers (app/services/events.py).
EventType = Literal["avatar.updated", "avatar.cropped", "avatar.deleted"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
# Standard Webhooks: secrets are "whsec_" and base64 of 24 to 64 random bytes.
MIN_WEBHOOK_SECRET_BYTES = 24


class WebhookEndpoint(BaseModel):
    """One receiver of ``AVATAR_WEBHOOKS``: signed with each of its secrets (two while one is
    being rotated), sent the events it lists (every type when none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    secret: list[str] = Field(min_length=1)
    events: list[EventType] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1)

    @field_validator("secret", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("secret")
    @classmethod
    def _standard_secrets(cls, value: list[str]) -> list[str]:
        import base64
        import binascii

        for secret in value:
            body = secret.removeprefix("whsec_").rstrip("=")
            try:
                raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
            except binascii.Error:
                raise ValueError("a secret is 'whsec_' followed by base64") from None
            if len(raw) < MIN_WEBHOOK_SECRET_BYTES:
                raise ValueError(f"a secret must hold at least {MIN_WEBHOOK_SECRET_BYTES} bytes")
        return value


class CdnPurge(BaseModel):
    """``AVATAR_CDN_PURGE``: one HTTP request per unversioned URL of a changed avatar.
    ``{url}`` in ``url`` or a header value is the URL as it is, ``{url_quoted}`` the URL
    percent-encoded (for a query parameter)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(default="PURGE", pattern=r"^[A-Z]{1,16}$")
    url: str = Field(default="{url}", max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict)
    events: list[EventType] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1)

    @field_validator("url")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{url}" not in value and "{url_quoted}" not in value:
            raise ValueError("the purge URL must contain {url} or {url_quoted}")
        if not re.match(r"^(https?://|\{url)", value):
            raise ValueError("the purge URL must start with http://, https:// or {url}")
        return value


class _EmptyValues(PydanticBaseSettingsSource):
    """The EMPTY_IS_A_VALUE settings that ``variables`` (the environment, or .env) set empty,
    which ``env_ignore_empty`` drops. It stands right after the source of those variables, so an
    empty one counts exactly where a non-empty one would."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str | None]):
        super().__init__(settings_cls)
        prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()
        given = {name.upper(): value for name, value in variables.items()}
        self.values = {
            name: "" for name in EMPTY_IS_A_VALUE if given.get(prefix + name.upper()) == ""
        }

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


def _env_file_variables(dotenv_settings: PydanticBaseSettingsSource) -> dict[str, str | None]:
    """Every variable of the .env file(s) the settings read, empty ones included."""
    env_files = getattr(dotenv_settings, "env_file", None)
    if env_files is None:
        return {}
    if isinstance(env_files, str | os.PathLike):
        env_files = [env_files]
    encoding = getattr(dotenv_settings, "env_file_encoding", None) or "utf-8"
    variables: dict[str, str | None] = {}
    for env_file in env_files:
        path = Path(env_file).expanduser()
        if path.is_file():
            variables.update(dotenv_values(path, encoding=encoding))
    return variables


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
    # A token must expire within this many seconds from now, whatever its `exp` claims.
    jwt_max_lifetime_seconds: int = Field(default=24 * 3600, gt=0)
    # The try-it page and `POST /dev/token` (a token for any user): a local developer's tool,
    # only in development, on a loopback address, with the generated secret and no provider.
    dev_tokens: bool = False

    # Uploads per user, as "N/second|minute|hour|day"; empty switches the limit off.
    rate_limit: str = "30/minute"
    # Generated default images (/avatars/{id}?default=...) rendered per client address, as
    # "N/minute" etc.; images already rendered are served from memory and not counted. Empty: off.
    default_rate_limit: str = "60/minute"
    # /readyz?deep=1 runs the image self-test at most once per this many seconds (else the last
    # report).
    selftest_interval: float = Field(default=300.0, ge=0)
    # Redis shared by the replicas (rate limits); unset: each process keeps its own counts.
    redis_url: str = ""

    # Idempotency-Key: how long a first answer is kept for retries, and how long a request may
    # hold its key before another takes it over (its replica is taken to be gone).
    idempotency_ttl: int = Field(default=24 * 3600, gt=0)
    idempotency_lock_timeout: float = Field(default=120.0, gt=0)

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
    # `serve`: the request line and headers must arrive within this many seconds (of the
    # connection opening or the previous response) and this many bytes (then 408 / 431).
    header_timeout: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_dimension: int = Field(default=DEFAULT_MAX_DIMENSION, gt=0)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)
    thumbnail_size: int = Field(default=DEFAULT_THUMBNAIL_SIZE, gt=0)
    # Image pipeline (app/imaging): more square sizes, the original's cap, animations, inputs.
    thumbnail_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_THUMBNAIL_SIZES)
    )
    original_max_side: int = Field(default=DEFAULT_ORIGINAL_MAX_SIDE, ge=0)
    # Sides renditions are made at (`?size=N` gets the smallest at least N), and the colour a
    # JPEG rendition of a transparent picture is laid on.
    size_ladder: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SIZE_LADDER)
    )
    jpeg_background: str = Field(default="#ffffff", pattern=r"^#[0-9a-fA-F]{6}$")
    max_frames: int = Field(default=DEFAULT_MAX_FRAMES, gt=0)
    allowed_formats: Annotated[list[ImageFormat], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_FORMATS)
    )
    # Uploads without a client crop: where the squares are cut. `face`: around the faces found,
    # else `content` (smartcrop's edges, saturation, skin), else the `centre`.
    auto_crop: AutoCropMode = DEFAULT_AUTO_CROP
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    queue_size: int = Field(default=16, ge=0)
    # Seconds of work an image job may take (queueing excluded); then its worker process is
    # killed and replaced, and the upload is refused with 422 image_too_complex.
    image_job_timeout: float = Field(default=30.0, gt=0)

    # Events from the outbox (app/services/events.py): signed webhooks and CDN purges, JSON.
    webhooks: list[WebhookEndpoint] = Field(default_factory=list)
    cdn_purge: CdnPurge | None = None
    # A dispatcher in each server process; off when dedicated `events work` processes send.
    events_dispatcher: bool = True
    # Seconds for one request to a receiver (connect to last byte); then it is retried.
    events_timeout: float = Field(default=10.0, gt=0)
    events_poll_interval: float = Field(default=1.0, gt=0)
    # Retries: exponential backoff from the first delay up to the longest, with jitter, for
    # this many seconds after the event; then the delivery is dead (`events replay` revives it).
    events_retry_first_delay: float = Field(default=10.0, gt=0)
    events_retry_max_delay: float = Field(default=3600.0, gt=0)
    events_retry_for: float = Field(default=86400.0, gt=0)
    # Finished events (every delivery made or dead) are removed after this many days.
    events_retention_days: int = Field(default=7, ge=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _EmptyValues(settings_cls, os.environ),
            dotenv_settings,
            _EmptyValues(settings_cls, _env_file_variables(dotenv_settings)),
            file_secret_settings,
        )

    @field_validator("thumbnail_sizes", "allowed_formats", "size_ladder", mode="before")
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

    @field_validator("size_ladder")
    @classmethod
    def _bounded_ladder(cls, value: list[int]) -> list[int]:
        sides = sorted(set(value))
        if not sides or len(sides) > MAX_LADDER_RUNGS:
            raise ValueError(f"the size ladder needs 1 to {MAX_LADDER_RUNGS} sides")
        if sides[0] <= 0 or sides[-1] > DEFAULT_MAX_DIMENSION:
            raise ValueError(f"ladder sides must be 1 to {DEFAULT_MAX_DIMENSION}")
        return sides

    @property
    def jpeg_background_rgb(self) -> tuple[int, int, int]:
        value = self.jpeg_background.lstrip("#")
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)

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
        if (self.webhooks or self.cdn_purge) and not self.public_base_url:
            raise ValueError(
                "AVATAR_PUBLIC_BASE_URL must be set with AVATAR_WEBHOOKS or AVATAR_CDN_PURGE "
                "(events carry and purge absolute URLs)"
            )
        names = [endpoint.name for endpoint in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError("AVATAR_WEBHOOKS: each endpoint needs a name of its own")
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("AVATAR_S3_BUCKET must be set when AVATAR_STORAGE=s3")
        unknown = set(self.jwt_algorithms) - SUPPORTED_ALGORITHMS
        if unknown:
            raise ValueError(
                f"AVATAR_JWT_ALGORITHMS: unsupported {sorted(unknown)}; "
                f"choose from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        for name in ("rate_limit", "default_rate_limit"):
            rate = getattr(self, name)
            if rate:
                from limits import parse_many

                try:
                    parse_many(rate)
                except ValueError:
                    raise ValueError(
                        f"AVATAR_{name.upper()} {rate!r} is not like '10/minute'"
                    ) from None
        if self.token_ttl_seconds > self.jwt_max_lifetime_seconds:
            raise ValueError(
                "AVATAR_TOKEN_TTL_SECONDS cannot exceed AVATAR_JWT_MAX_LIFETIME_SECONDS "
                "(the service would refuse its own tokens)"
            )
        if self.dev_tokens:
            self._check_dev_tokens()
        if self.env == "production":
            if not self.jwt_secret and not self.has_identity_provider:
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

    def _check_dev_tokens(self) -> None:
        """Development tokens are for a developer's own machine: refused wherever they could
        open a real deployment (the address is checked by ``serve`` and by the endpoint)."""
        if self.env != "development":
            raise ValueError("AVATAR_DEV_TOKENS=true is refused unless AVATAR_ENV=development")
        if self.jwt_secret or self.has_identity_provider:
            raise ValueError(
                "AVATAR_DEV_TOKENS=true is refused with AVATAR_JWT_SECRET, AVATAR_JWT_PUBLIC_KEY "
                "or AVATAR_JWKS_URL set: development tokens never share a real deployment's keys"
            )
        if "HS256" not in self.jwt_algorithms:
            raise ValueError("AVATAR_DEV_TOKENS=true needs HS256 in AVATAR_JWT_ALGORITHMS")

    @property
    def has_identity_provider(self) -> bool:
        return bool(self.jwt_public_key or self.jwks_url)

    @property
    def uses_generated_secret(self) -> bool:
        """HS256 tokens are signed with the secret generated in the data folder: only in
        development, when neither a secret nor an identity provider is configured."""
        return self.env == "development" and not self.jwt_secret and not self.has_identity_provider

    @property
    def media_path(self) -> Path:
        assert self.media_root is not None  # set by _derive_defaults
        return self.media_root

    @property
    def hs256_enabled(self) -> bool:
        """HS256 tokens are accepted: allowed, and a secret is set or may be generated."""
        return "HS256" in self.jwt_algorithms and bool(
            self.jwt_secret or self.uses_generated_secret
        )

    def signing_secret(self) -> str:
        """The HS256 secret: the configured one, or in development without an identity provider
        one generated once and kept in the data folder, so the server and
        ``avatar-service token`` agree."""
        if self.jwt_secret:
            return self.jwt_secret
        if not self.uses_generated_secret:
            raise ConfigurationError(
                "AVATAR_JWT_SECRET is not set: HS256 tokens are off (the generated development "
                "secret is used only in development without an identity provider)"
            )
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
