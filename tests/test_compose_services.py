"""docker-compose.yml's services around the app: the proxy in front of the API replicas, the GPU worker and its
image, and Prometheus and Grafana with the files they mount. Each is checked against what it points at: the proxy's
nginx configuration against the `api` service and the trusted-proxy setting, the GPU image against the Makefile's
install, the scrape configuration against the API's port and token. No Docker: YAML, text and the Settings."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
import yaml

from inference.install import INSIGHTFACE_VERSION
from tests.deploy_files import (
    ROOT,
    assert_real_command,
    command,
    container_environment,
    environment,
    load_compose,
    services,
)

NGINX_CONFIG = ROOT / "docker" / "nginx" / "facemint.conf"
GPU_DOCKERFILE = ROOT / "docker" / "Dockerfile.gpu"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "docker" / "grafana"
DOCKER_DNS = "127.0.0.11"
# nginx's `server ... resolve` in an upstream (re-resolving a name while running) is in open-source nginx since 1.27.3.
NGINX_RESOLVE_SINCE = (1, 27, 3)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's short-form volumes."""
    return {parts[1]: parts[0] for parts in (str(volume).split(":") for volume in service.get("volumes", []))}


def _api_port(compose: dict[str, Any]) -> int:
    port = assert_real_command(command(services(compose)["api"]), "serve").params["port"]
    assert isinstance(port, int)
    return port


# --- the API replicas behind one port -----------------------------------------------------------------------------


def test_several_api_replicas_and_no_port_of_their_own(compose: dict[str, Any]) -> None:
    api = services(compose)["api"]
    assert api["deploy"]["replicas"] >= 2
    # A published port or a fixed name would stop a second replica from starting.
    assert "ports" not in api
    assert "container_name" not in api


def test_the_proxy_publishes_the_one_port(compose: dict[str, Any]) -> None:
    published = [str(port) for service in services(compose).values() for port in service.get("ports", [])]
    proxy_ports = [str(port) for port in services(compose)["proxy"]["ports"]]
    assert [port.rsplit(":", 1)[0] for port in proxy_ports] == ["${FACEMINT_HTTP_PORT:-8000}"]
    # Everything else published is bound to loopback (Prometheus, Grafana).
    for port in set(published) - set(proxy_ports):
        assert port.startswith("127.0.0.1:"), port


def test_nginx_spreads_requests_over_every_replica(compose: dict[str, Any]) -> None:
    proxy = services(compose)["proxy"]
    image_version = tuple(int(part) for part in str(proxy["image"]).split(":")[1].split("."))
    assert str(proxy["image"]).startswith("nginx:")
    assert image_version >= NGINX_RESOLVE_SINCE, "`resolve` needs nginx 1.27.3 or newer"
    assert ROOT / _mounts(proxy)["/etc/nginx/conf.d/default.conf"] == NGINX_CONFIG
    config = NGINX_CONFIG.read_text()
    assert re.search(rf"^resolver {re.escape(DOCKER_DNS)}\b", config, re.MULTILINE)
    upstream = re.search(r"upstream (\w+) \{(.*?)\}", config, re.DOTALL)
    assert upstream is not None
    name, body = upstream.groups()
    assert re.search(rf"^\s*server api:{_api_port(compose)} resolve;", body, re.MULTILINE)
    assert re.search(r"^\s*zone \w+", body, re.MULTILINE), "`resolve` needs a shared-memory zone"
    assert f"proxy_pass http://{name};" in config
    (listen,) = re.findall(r"^\s*listen (\d+);", config, re.MULTILINE)
    assert [str(port).rsplit(":", 1)[1] for port in proxy["ports"]] == [listen]


def test_nginx_streams_bodies_to_the_app_and_hides_the_metrics() -> None:
    """The app bounds every body while it streams (up to a 512 MiB video): nginx must neither refuse nor buffer
    them; /metrics is for Prometheus on the inside only."""
    config = NGINX_CONFIG.read_text()
    assert "client_max_body_size 0;" in config
    assert "proxy_request_buffering off;" in config
    assert re.search(r"location = /metrics \{\s*return 404;", config)


def test_the_api_believes_forwarded_addresses_from_the_proxy_alone(compose: dict[str, Any]) -> None:
    """FACEMINT_TRUSTED_PROXIES is the proxy's fixed address, inside the network's subnet."""
    (subnet,) = (entry["subnet"] for entry in compose["networks"]["default"]["ipam"]["config"])
    proxy_address = services(compose)["proxy"]["networks"]["default"]["ipv4_address"]
    assert ipaddress.ip_address(proxy_address) in ipaddress.ip_network(subnet)
    trusted = yaml.safe_load(container_environment(environment(services(compose)["api"]))["FACEMINT_TRUSTED_PROXIES"])
    assert trusted == [proxy_address]
    assert "X-Forwarded-For $proxy_add_x_forwarded_for;" in NGINX_CONFIG.read_text()


# --- the GPU worker ------------------------------------------------------------------------------------------------


def test_the_gpu_worker_holds_one_gpu(compose: dict[str, Any]) -> None:
    """One warm process per GPU: the reservation names one device (Docker gives `count: 1` the same first GPU to
    every replica, so a count would stack workers on GPU 0)."""
    worker = services(compose)["worker-gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert "count" not in device
    assert len(device["device_ids"]) == 1
    assert worker["deploy"].get("replicas", 1) == 1
    assert "profiles" not in worker


def test_the_cpu_worker_is_a_profile(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker-cpu"]
    assert worker["profiles"] == ["cpu"]
    assert "deploy" not in worker, "the CPU worker reserves no device"


def test_the_gpu_worker_is_built_from_the_gpu_image(compose: dict[str, Any]) -> None:
    build = services(compose)["worker-gpu"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == GPU_DOCKERFILE
    assert services(compose)["worker-gpu"]["image"] != services(compose)["api"]["image"]


def _run_lines(dockerfile: str) -> str:
    return re.sub(r"\\\n\s*", " ", dockerfile)


def test_the_gpu_image_installs_the_engine_as_the_makefile_does() -> None:
    """onnxruntime-gpu through the project's `gpu` extra, insightface without its dependencies at the version the
    install check wants, then the check itself: the same three steps as `ORT=gpu make install`."""
    dockerfile = _run_lines(GPU_DOCKERFILE.read_text())
    makefile = (ROOT / "Makefile").read_text()
    assert f"--no-deps insightface=={INSIGHTFACE_VERSION}" in makefile
    steps = [
        'pip install -e ".[gpu]"',
        f"pip install --no-deps insightface=={INSIGHTFACE_VERSION}",
        "python -m inference.install --check",
    ]
    positions = [dockerfile.find(step) for step in steps]
    assert -1 not in positions, positions
    assert positions == sorted(positions)
    assert any(dependency.startswith("onnxruntime-gpu") for dependency in _optional_dependencies()["gpu"])


def _optional_dependencies() -> dict[str, list[str]]:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert isinstance(extras, dict)
    return extras


def test_the_gpu_image_is_cuda_with_cudnn_and_the_app_of_the_cpu_image() -> None:
    gpu = GPU_DOCKERFILE.read_text()
    cpu = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", gpu, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base.group(1))
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", gpu, re.MULTILINE)
    # The same application files, the same non-root user and uid, prod by default.
    copies = [line for line in cpu.splitlines() if line.startswith("COPY ")]
    assert copies == [line for line in gpu.splitlines() if line.startswith("COPY ")]
    useradd = re.compile(r"useradd --system --uid (\d+) .* (\w+) \\?$", re.MULTILINE)
    assert useradd.findall(gpu) == useradd.findall(cpu) == [("10001", "facemint")]
    assert re.search(r"^USER facemint$", gpu, re.MULTILINE)
    assert "FACEMINT_ENV=prod" in gpu


def test_the_gpu_image_runs_one_worker_process() -> None:
    match = re.search(r"^CMD (\[.*\])$", GPU_DOCKERFILE.read_text(), re.MULTILINE)
    assert match is not None
    context = assert_real_command(yaml.safe_load(match.group(1)), "worker")
    assert context.params["concurrency"] == 1


# --- Prometheus and Grafana ----------------------------------------------------------------------------------------


def test_prometheus_mounts_its_configuration_and_rules(compose: dict[str, Any]) -> None:
    prometheus = services(compose)["prometheus"]
    mounts = _mounts(prometheus)
    assert ROOT / mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    for rule_file in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]:
        source = mounts[f"/etc/prometheus/{rule_file}"]
        assert (ROOT / source).is_file(), source


def test_prometheus_scrapes_every_api_replica(compose: dict[str, Any]) -> None:
    (job,) = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["api"]
    assert "api" in services(compose)
    assert (discovery["type"], discovery["port"]) == ("A", _api_port(compose))


def test_prometheus_sends_the_api_s_metrics_token(compose: dict[str, Any]) -> None:
    """The token file Prometheus sends is a compose secret made from the very variable the API's
    FACEMINT_METRICS_TOKEN comes from."""
    (job,) = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    token_file = job["authorization"]["credentials_file"]
    (secret,) = [s for s in services(compose)["prometheus"]["secrets"] if s["target"] == token_file]
    source_variable = compose["secrets"][secret["source"]]["environment"]
    api_value = environment(services(compose)["api"])["FACEMINT_METRICS_TOKEN"]
    assert api_value.startswith(f"${{{source_variable}:?")


def test_grafana_mounts_the_provisioning_and_the_dashboards(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    mounts = _mounts(grafana)
    assert ROOT / mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    (provider,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())[
        "providers"
    ]
    assert ROOT / mounts[provider["options"]["path"]] == GRAFANA_DIR / "dashboards"
    (datasource,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in services(compose)
    assert environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
