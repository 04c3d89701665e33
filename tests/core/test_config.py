from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from app.core.config import ConfigurationError, load_settings


def test_embedded_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("AVATAR_"):
            monkeypatch.delenv(name)
    settings = load_settings(_env_file=None)
    assert settings.env == "development"
    assert settings.database_url == "sqlite+aiosqlite:///data/avatar.db"
    assert settings.storage == "local"
    assert settings.media_path == Path("data/media")
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.max_dimension == 4096
    assert settings.max_pixels == 50_000_000
    assert settings.thumbnail_size == 400


def test_settings_come_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AVATAR_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("AVATAR_PUBLIC_BASE_URL", "https://cdn.example.test/")
    settings = load_settings(_env_file=None, data_dir=tmp_path)
    assert settings.max_upload_bytes == 1234
    assert settings.public_base_url == "https://cdn.example.test"


def test_env_file_is_read(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AVATAR_THUMBNAIL_SIZE", raising=False)
    (tmp_path / ".env").write_text("AVATAR_THUMBNAIL_SIZE=256\n")
    assert load_settings().thumbnail_size == 256


def test_production_refuses_to_start_without_a_secret(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="AVATAR_JWT_SECRET"):
        load_settings(_env_file=None, env="production", jwt_secret="", data_dir=tmp_path)


def test_production_refuses_a_short_secret(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        load_settings(_env_file=None, env="production", jwt_secret="short", data_dir=tmp_path)


def test_invalid_values_are_reported_readably(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="max_upload_bytes"):
        load_settings(_env_file=None, max_upload_bytes=0, data_dir=tmp_path)


def test_development_secret_is_generated_once_and_kept(tmp_path) -> None:
    first = load_settings(_env_file=None, jwt_secret="", data_dir=tmp_path)
    secret = first.signing_secret()
    assert len(secret) >= 32
    second = load_settings(_env_file=None, jwt_secret="", data_dir=tmp_path)
    assert second.signing_secret() == secret
    mode = stat.S_IMODE((tmp_path / "jwt-secret").stat().st_mode)
    assert mode == 0o600


def test_explicit_secret_wins(tmp_path) -> None:
    settings = load_settings(_env_file=None, jwt_secret="explicit-" + "z" * 40, data_dir=tmp_path)
    assert settings.signing_secret().startswith("explicit-")
    assert not (tmp_path / "jwt-secret").exists()


def without_avatar_variables(monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("AVATAR_"):
            monkeypatch.delenv(name)


def test_an_empty_rate_limit_in_the_environment_switches_the_limit_off(
    monkeypatch, tmp_path
) -> None:
    """As README and .env.example say: `AVATAR_RATE_LIMIT=` is no limit, not the default."""
    without_avatar_variables(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AVATAR_RATE_LIMIT=5/minute\n")
    assert load_settings().rate_limit == "5/minute"
    monkeypatch.setenv("AVATAR_RATE_LIMIT", "")
    assert load_settings().rate_limit == ""  # the environment wins over .env, empty or not
    assert load_settings(_env_file=None).rate_limit == ""
    assert load_settings(rate_limit="7/hour").rate_limit == "7/hour"  # arguments win


def test_an_empty_rate_limit_in_env_file_switches_the_limit_off(monkeypatch, tmp_path) -> None:
    without_avatar_variables(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AVATAR_RATE_LIMIT=\nAVATAR_MAX_DIMENSION=\n")
    settings = load_settings()
    assert settings.rate_limit == ""
    assert settings.max_dimension == 4096  # other empty settings still mean the default
    monkeypatch.setenv("AVATAR_RATE_LIMIT", "3/minute")
    assert load_settings().rate_limit == "3/minute"
    monkeypatch.delenv("AVATAR_RATE_LIMIT")
    assert load_settings(_env_file=None).rate_limit == "30/minute"


def test_other_empty_variables_still_mean_the_default(monkeypatch, tmp_path) -> None:
    """Compose passes unset values as empty strings (`${AVATAR_X:-}`): they are the default,
    and do not hide a value in .env."""
    without_avatar_variables(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AVATAR_PORT=9000\n")
    monkeypatch.setenv("AVATAR_PORT", "")
    monkeypatch.setenv("AVATAR_MAX_DIMENSION", "")
    settings = load_settings()
    assert settings.port == 9000
    assert settings.max_dimension == 4096
