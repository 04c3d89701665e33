"""`.env.example` names every setting of the code, and nothing else."""

from __future__ import annotations

import re

from app.core.config import Settings
from tests.conftest import ROOT


def documented_settings() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^(AVATAR_[A-Z0-9_]+)=", text, flags=re.MULTILINE))


def code_settings() -> set[str]:
    return {f"AVATAR_{name.upper()}" for name in Settings.model_fields}


def test_env_example_lists_every_setting() -> None:
    assert documented_settings() == code_settings()


def test_env_example_parses_with_its_defaults(tmp_path) -> None:
    from app.core.config import load_settings

    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    settings = load_settings(_env_file=str(env_file), data_dir=tmp_path)
    assert settings == load_settings(_env_file=None, data_dir=tmp_path)


def test_readme_lists_every_error_code() -> None:
    from app.core.errors import all_error_classes

    readme = (ROOT / "README.md").read_text()
    abstract = {"invalid_image", "service_unavailable"}  # bases, never raised as such
    for cls in all_error_classes():
        if cls.code not in abstract:
            assert f"`{cls.code}`" in readme, cls.code


def test_readme_configuration_reference_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    reference = readme.split("### Configuration reference", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `(AVATAR_[A-Z0-9_]+)`", reference, flags=re.MULTILINE))
    assert documented == code_settings()


def test_readme_metrics_table_matches_every_metric() -> None:
    """Each metric ``Metrics`` declares is a row of the README's table with its type and
    labels, and the table names no other."""
    from prometheus_client import Counter, Gauge, Histogram

    from app.core.metrics import HELP, Metrics

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(avatar_\w+)` \| (\w+) \| ([^|]*) \|", readme, flags=re.MULTILINE)
    documented = {name: (kind, re.findall(r"`(\w+)`", labels)) for name, kind, labels in rows}
    kinds = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}
    declared = {}
    for metric in vars(Metrics()).values():
        if type(metric) in kinds:
            name = metric._name + ("_total" if isinstance(metric, Counter) else "")
            declared[name] = (kinds[type(metric)], list(metric._labelnames))
    assert documented == declared
    assert set(HELP) == set(declared)
