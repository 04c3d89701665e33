"""The container files, checked as far as this machine allows (no Docker engine runs here):
they parse, they name only settings the code has, and the image's migrate path works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT
from tests.deployment import CODE_SETTINGS, unknown_settings


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_only_settings_the_code_has() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    # AVATAR_PUBLISHED_PORT is a compose-only port mapping.
    unknown = unknown_settings(text, allowed=frozenset({"AVATAR_PUBLISHED_PORT"}))
    assert not unknown, f"compose names settings the code does not have: {sorted(unknown)}"
    env = compose()["x-avatar-environment"]
    for required in (
        "AVATAR_DATABASE_URL",
        "AVATAR_STORAGE",
        "AVATAR_S3_BUCKET",
        "AVATAR_S3_ENDPOINT_URL",
        "AVATAR_REDIS_URL",
        "AVATAR_JWT_SECRET",
    ):
        assert required in env


def test_compose_services_and_dependencies() -> None:
    services = compose()["services"]
    assert {"avatar", "postgres", "minio", "create-bucket", "redis", "migrate"} <= set(services)
    for name in ("postgres", "minio", "redis"):
        assert "healthcheck" in services[name], name
    depends = services["avatar"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["create-bucket"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["avatar-service", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2 and all("slim" in stage for stage in stages)
    assert re.search(r"^USER\s+(?!root)\w+", text, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*", text, flags=re.MULTILINE)
    assert "/healthz" in text
    assert re.search(r'^CMD \["avatar-service", "serve"\]', text, flags=re.MULTILINE)
    assert "migrate" not in text.split("CMD [")[-1]  # migrations are not run at every start
    for name in re.findall(r"\b(AVATAR_[A-Z0-9_]+)\b", text):
        assert name in CODE_SETTINGS, name


@pytest.mark.server
def test_migrate_from_an_installed_package_uses_the_working_directory(tmp_path) -> None:
    """In the image the package sits in site-packages and alembic/ in the working folder."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "app", site / "app")
    workdir = tmp_path / "srv"
    workdir.mkdir()
    shutil.copy(ROOT / "alembic.ini", workdir)
    shutil.copytree(ROOT / "alembic", workdir / "alembic")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    env.update({"PYTHONPATH": str(site), "AVATAR_DATA_DIR": str(tmp_path / "data")})
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "avatar.db").is_file()


def image_environment() -> dict[str, str]:
    """The AVATAR_* variables the Dockerfile's ENV lines set."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.*)$", text, flags=re.MULTILINE):
        found.update(re.findall(r"\b(AVATAR_[A-Z0-9_]+)=(\S+)", line))
    return found


@pytest.mark.server
def test_the_image_is_production_unless_told_otherwise(tmp_path) -> None:
    """Run as the image would (its environment, no secret): refused, so no development token
    or generated secret can ever serve from it; asking for development tokens is refused too."""
    image = image_environment()
    assert image["AVATAR_ENV"] == "production"
    assert "AVATAR_DEV_TOKENS" not in image
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    env.update(image)
    env["AVATAR_DATA_DIR"] = str(tmp_path / "data")
    for extra in ({}, {"AVATAR_DEV_TOKENS": "true", "AVATAR_JWT_SECRET": "i" * 48}):
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "jwt-secret").exists()
