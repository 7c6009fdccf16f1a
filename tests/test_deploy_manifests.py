"""The Kubernetes manifests under deploy/k8s against the Kubernetes API schemas and the code they run.

Every kustomization is rendered (by `render` below, which knows the few kustomize fields these files use, and is
compared with `kubectl kustomize` where kubectl is installed), and every object it yields is validated strictly
(unknown fields rejected) by kubernetes-validate against the oldest Kubernetes version the docs promise and the
newest it ships. Then the objects are read as the cluster would run them: real `facemint` commands, probes on
routes the app serves, the settings `Settings` accepts, the non-root user of the images, a GPU per GPU worker.
No cluster is needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from facemint.config import Environment, Settings
from facemint.health import router as health_router
from tests.deploy_files import (
    ENV_PREFIX,
    ROOT,
    S3_CREDENTIAL_VARIABLES,
    TEST_SECRETS,
    assert_real_command,
    assert_settings_fields,
    load_compose,
)

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
KUSTOMIZATIONS = [BASE, K8S / "overlays" / "cpu-worker", K8S / "models-fetch"]
SECRET_EXAMPLE = K8S / "facemint.env.example"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
OLDEST_KUBERNETES = "1.29.0"  # docs/deployment.md
VERSIONS = [OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version()]
# What `render` understands; anything else in a kustomization.yaml fails the tests instead of rendering wrongly.
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}
POD_OWNERS = {"Deployment", "Job"}
IMAGE_USER = 10001  # the Dockerfile's and docker/Dockerfile.gpu's `useradd --uid`
SERVICE_SECRET, OWNER_SECRET = "facemint", "facemint-migrate"
SUBCOMMANDS = {
    "facemint-api": "serve",
    "facemint-migrate": "migrate",
    "facemint-worker-gpu": "worker",
    "facemint-worker-cpu": "worker",
    "facemint-models-fetch": "models fetch",
}


# --- rendering ------------------------------------------------------------------------------------------------


def _kustomization(directory: Path) -> dict[str, Any]:
    document = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(document, dict)
    return document


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build directory` yields, for the fields in KUSTOMIZE_FIELDS."""
    kustomization = _kustomization(directory)
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for obj in objects:
        if "namespace" in kustomization and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = kustomization["namespace"]
        for label in kustomization.get("labels", []):
            assert label.get("includeSelectors", False) is False, "render does not change selectors"
            assert label.get("includeTemplates", False) is False, "render does not change pod templates"
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
        for container in _containers(obj):
            for image in kustomization.get("images", []):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    return objects


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] not in POD_OWNERS:
        return None
    spec = obj["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def _containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = _pod_spec(obj)
    if spec is not None:
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def _all_objects() -> list[tuple[str, dict[str, Any]]]:
    """What each kustomization yields (the base's objects again in the overlay that includes it)."""
    return [(directory.relative_to(K8S).as_posix(), obj) for directory in KUSTOMIZATIONS for obj in render(directory)]


def _objects_id(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


OBJECTS = _all_objects()
# Everything once: the overlay that holds the base, and the models job.
EVERYTHING = [(directory.name, obj) for directory in KUSTOMIZATIONS[1:] for obj in render(directory)]
POD_OBJECTS = [item for item in EVERYTHING if _pod_spec(item[1]) is not None]


def _by_name(kind: str, name: str) -> dict[str, Any]:
    (found,) = [obj for _, obj in EVERYTHING if obj["kind"] == kind and obj["metadata"]["name"] == name]
    return found


# --- the files and the schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.relative_to(K8S).as_posix())
def test_every_listed_resource_exists(directory: Path) -> None:
    kustomization = _kustomization(directory)
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    assert set(kustomization) <= KUSTOMIZE_FIELDS, set(kustomization) - KUSTOMIZE_FIELDS
    for resource in kustomization["resources"]:
        path = directory / resource
        assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{directory}: {resource} is missing"


def test_every_manifest_file_is_listed_somewhere() -> None:
    """A manifest no kustomization lists would never be applied (nor validated here)."""
    listed = {
        (directory / resource).resolve()
        for directory in KUSTOMIZATIONS
        for resource in _kustomization(directory)["resources"]
    }
    files = {path.resolve() for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml"}
    assert files - listed == set()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("item", OBJECTS, ids=_objects_id)
def test_every_object_is_valid_kubernetes(item: tuple[str, dict[str, Any]], version: str) -> None:
    kubernetes_validate.validate(item[1], version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The check is live: a misspelt field (`resource` for `resources`) fails it."""
    deployment = json.loads(json.dumps(_by_name("Deployment", "facemint-api")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.relative_to(K8S).as_posix())
def test_render_agrees_with_kustomize(directory: Path) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KUBECONFIG": os.devnull},
        timeout=60,
    ).stdout

    def key(obj: dict[str, Any]) -> str:
        return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"

    ours = {key(obj): obj for obj in render(directory)}
    theirs = {key(obj): obj for obj in yaml.safe_load_all(built) if obj}
    assert ours == theirs


# --- what the objects run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("item", POD_OBJECTS, ids=_objects_id)
def test_every_pod_runs_locked_down_as_the_image_user(item: tuple[str, dict[str, Any]]) -> None:
    spec = _pod_spec(item[1])
    assert spec is not None
    assert spec["automountServiceAccountToken"] is False
    pod = spec["securityContext"]
    assert (pod["runAsNonRoot"], pod["runAsUser"], pod["fsGroup"]) == (True, IMAGE_USER, IMAGE_USER)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for container in _containers(item[1]):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        # The root is read-only: /tmp is a volume of its own.
        (tmp,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]]


@pytest.mark.parametrize("item", POD_OBJECTS, ids=_objects_id)
def test_every_container_runs_a_real_facemint_command(item: tuple[str, dict[str, Any]]) -> None:
    (container,) = _containers(item[1])
    assert_real_command(container["command"], SUBCOMMANDS[item[1]["metadata"]["name"]])
    # Every image is mapped to a registry by its kustomization's `images` (an overlay's by its own).
    assert container["image"].startswith("registry.example.com/facemint"), container["image"]


def test_the_api_probes_routes_the_app_serves() -> None:
    (container,) = _containers(_by_name("Deployment", "facemint-api"))
    served = {route.path for route in health_router.routes}  # type: ignore[attr-defined]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= served
    (port,) = container["ports"]
    listening = assert_real_command(container["command"], "serve").params
    assert (port["containerPort"], listening["port"], listening["host"]) == (8000, 8000, "0.0.0.0")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]


def test_the_service_reaches_the_api_pods() -> None:
    service = _by_name("Service", "facemint-api")
    deployment = _by_name("Deployment", "facemint-api")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = _containers(deployment)
    assert [port["targetPort"] for port in service["spec"]["ports"]] == [p["name"] for p in container["ports"]]


def test_the_autoscaler_owns_the_api_replica_count() -> None:
    hpa = _by_name("HorizontalPodAutoscaler", "facemint-api")
    deployment = _by_name("Deployment", "facemint-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert (metric["resource"]["name"], metric["resource"]["target"]["type"]) == ("cpu", "Utilization")
    assert hpa["spec"]["minReplicas"] >= 2
    # An apply must not reset what the autoscaler chose; utilisation is relative to the CPU request.
    assert "replicas" not in deployment["spec"]
    (container,) = _containers(deployment)
    assert "cpu" in container["resources"]["requests"]


@pytest.mark.parametrize(
    ("name", "image"), [("facemint-worker-gpu", "facemint-gpu"), ("facemint-worker-cpu", "facemint")]
)
def test_workers_run_one_warm_process_per_pod(name: str, image: str) -> None:
    deployment = _by_name("Deployment", name)
    (container,) = _containers(deployment)
    assert assert_real_command(container["command"], "worker").params["concurrency"] == 1
    assert container["image"].rsplit(":", 1)[0].endswith("/" + image)
    # Warm shutdown: as long as compose waits for a worker.
    compose_grace = load_compose()["services"]["worker-gpu"]["stop_grace_period"]
    assert f"{deployment['spec']['template']['spec']['terminationGracePeriodSeconds']}s" == compose_grace
    (models,) = [mount for mount in container["volumeMounts"] if mount["name"] == "models"]
    assert models["readOnly"] is True


def test_each_gpu_worker_pod_holds_one_gpu() -> None:
    (container,) = _containers(_by_name("Deployment", "facemint-worker-gpu"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (cpu_container,) = _containers(_by_name("Deployment", "facemint-worker-cpu"))
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]


def test_volumes_name_claims_that_exist() -> None:
    claims = {obj["metadata"]["name"] for _, obj in EVERYTHING if obj["kind"] == "PersistentVolumeClaim"}
    for _, obj in POD_OBJECTS:
        spec = _pod_spec(obj)
        assert spec is not None
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


# --- settings and secrets -----------------------------------------------------------------------------------


def _env_refs(obj: dict[str, Any], kind: str) -> set[str]:
    ref = "configMapRef" if kind == "ConfigMap" else "secretRef"
    return {
        source[ref]["name"]
        for container in _containers(obj)
        for source in container.get("envFrom", [])
        if ref in source
    }


def _secret_example() -> dict[str, str]:
    pairs = {}
    for line in SECRET_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def test_only_the_migration_reads_the_owner_secret() -> None:
    for _, obj in POD_OBJECTS:
        secrets = _env_refs(obj, "Secret")
        configs = _env_refs(obj, "ConfigMap")
        assert (SERVICE_SECRET in secrets, configs) == (True, {"facemint"}), obj["metadata"]["name"]
        assert (OWNER_SECRET in secrets) == (obj["metadata"]["name"] == "facemint-migrate"), obj["metadata"]["name"]


def test_the_secrets_hold_settings_and_are_documented() -> None:
    example = _secret_example()
    assert_settings_fields(example, SECRET_EXAMPLE.name)
    assert {name for name in example if not name.startswith(ENV_PREFIX)} == S3_CREDENTIAL_VARIABLES
    doc = DEPLOYMENT_DOC.read_text()
    for name in [*example, "FACEMINT_DATABASE_OWNER_URL"]:
        assert f"`{name}`" in doc, f"docs/deployment.md does not name {name}"
    for secret in (SERVICE_SECRET, OWNER_SECRET):
        assert f"`{secret}`" in doc


def test_the_configmap_and_secret_make_valid_prod_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's settings plus a filled-in Secret are what `Settings` accepts in prod: S3, encrypted."""
    config = _by_name("ConfigMap", "facemint")["data"]
    example = _secret_example()
    assert assert_settings_fields(config, "configmap.yaml") == len(config)
    assert not config.keys() & example.keys(), "each setting in one place"
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in {**config, **example}.items():
        monkeypatch.setenv(name, TEST_SECRETS.get(name, value))
    settings = Settings()
    assert settings.env is Environment.prod
    assert (settings.storage_backend, settings.s3_bucket) == ("s3", config["FACEMINT_S3_BUCKET"])
    assert settings.storage_keyring() is not None
    assert settings.metrics_token is not None
    assert settings.resolved_models_dir == Path(config["FACEMINT_MODELS_DIR"])
    (worker,) = _containers(_by_name("Deployment", "facemint-worker-gpu"))
    assert [m["mountPath"] for m in worker["volumeMounts"] if m["name"] == "models"] == [config["FACEMINT_MODELS_DIR"]]
