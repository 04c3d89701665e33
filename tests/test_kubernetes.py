"""The Kubernetes manifests in deploy/kubernetes: valid against the Kubernetes schemas (shipped
by kubernetes-validate, so this runs offline), naming only settings the code has, and holding
the promises the README makes about probes, shutdown, users and sizes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.core.config import load_settings
from tests.conftest import ROOT
from tests.deployment import unknown_settings

MANIFESTS = ROOT / "deploy" / "kubernetes"
# The schemas kubernetes-validate ships for the version it is pinned at.
KUBERNETES_VERSION = kubernetes_validate.latest_version()


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_paths() -> list[Path]:
    return sorted(MANIFESTS.glob("*.yaml"))


def resources() -> dict[str, dict[str, Any]]:
    """Every resource by kind (each kind appears once)."""
    found: dict[str, dict[str, Any]] = {}
    for path in manifest_paths():
        for doc in documents(path):
            assert doc["kind"] not in found, f"two {doc['kind']} resources"
            found[doc["kind"]] = doc
    return found


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    kinds = resources()
    yield "Deployment", kinds["Deployment"]["spec"]["template"]["spec"]
    yield "Job", kinds["Job"]["spec"]["template"]["spec"]
    yield "CronJob", kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def validation_errors(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


def test_the_manifests_are_all_there() -> None:
    kinds = set(resources())
    assert kinds == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Job",
        "CronJob",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


@pytest.mark.parametrize("path", manifest_paths(), ids=lambda path: path.name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in documents(path):
        assert validation_errors(doc) is None


def test_the_validator_rejects_a_misspelt_field_and_a_wrong_type() -> None:
    """Strict validation: a field Kubernetes would silently drop is an error here."""
    misspelt = copy.deepcopy(resources()["Deployment"])
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True  # capital S: no such field
    assert validation_errors(misspelt) is not None
    mistyped = copy.deepcopy(resources()["Deployment"])
    mistyped["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    assert validation_errors(mistyped) is not None


@pytest.mark.parametrize("path", manifest_paths(), ids=lambda path: path.name)
def test_manifest_names_only_settings_the_code_has(path: Path) -> None:
    unknown = unknown_settings(path.read_text())
    assert not unknown, f"{path.name} names settings the code does not have: {sorted(unknown)}"


def test_configmap_and_secret_make_a_valid_production_configuration() -> None:
    kinds = resources()
    environment = {**kinds["ConfigMap"]["data"], **kinds["Secret"]["stringData"]}
    values = {name.removeprefix("AVATAR_").lower(): value for name, value in environment.items()}
    settings = load_settings(_env_file=None, **values)
    assert settings.env == "production"
    assert settings.storage == "s3"
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.redis_url  # replicas share the rate-limit counts


def test_every_pod_reads_the_configmap_and_the_secret() -> None:
    for kind, spec in pod_specs():
        for container in spec["containers"]:
            sources = {
                next(iter(source)): next(iter(source.values()))["name"]
                for source in container["envFrom"]
            }
            assert sources == {"configMapRef": "avatar-service", "secretRef": "avatar-service"}, (
                kind
            )


def test_pods_run_as_non_root_on_a_read_only_root_filesystem() -> None:
    for kind, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, kind
        assert spec["securityContext"]["runAsUser"] == 10001, kind  # the image's user
        assert spec["automountServiceAccountToken"] is False, kind
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, kind
            assert security["allowPrivilegeEscalation"] is False, kind
            assert security["capabilities"]["drop"] == ["ALL"], kind
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert "/data" in mounts, kind  # AVATAR_DATA_DIR must be writable


def test_probes_and_the_grace_period_cover_a_graceful_shutdown() -> None:
    kinds = resources()
    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["command"] == ["avatar-service", "serve"]
    shutdown = float(kinds["ConfigMap"]["data"]["AVATAR_SHUTDOWN_TIMEOUT"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] >= pause + shutdown + 5
    assert kinds["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_cpu_request_matches_the_image_workers() -> None:
    """Each image worker keeps one core busy during an upload: the pod asks for as many cores
    as it runs workers, and the HPA's CPU target is measured against that request."""
    kinds = resources()
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert "cpu" not in container["resources"].get("limits", {})  # no throttling mid-upload
    assert int(container["resources"]["requests"]["cpu"]) == int(
        kinds["ConfigMap"]["data"]["AVATAR_WORKERS"]
    )
    assert kinds["ConfigMap"]["data"]["AVATAR_PROCESSES"] == "1"


def test_service_hpa_and_budget_point_at_the_deployment() -> None:
    kinds = resources()
    deployment = kinds["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] >= 2  # the budget lets one go at a time and one still serves
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] < hpa["minReplicas"]
    # Migrations run as their own Job, never at server start; gc runs from one place.
    (job,) = kinds["Job"]["spec"]["template"]["spec"]["containers"]
    assert job["command"] == ["avatar-service", "migrate"]
    cron = kinds["CronJob"]["spec"]
    (gc,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert gc["command"][:3] == ["avatar-service", "gc", "--apply"]
    assert cron["concurrencyPolicy"] == "Forbid"
