"""docker/prometheus checked by Debian's Prometheus, which `make test` installs (the `prometheus` package ships
`prometheus` and `promtool`): promtool accepts the configuration and the rules, and runs the rules' unit tests
(alerts_test.yml, which shows every alert both firing and silent); then a real Prometheus, configured like prod,
scrapes a live `facemint serve` in prod mode with the metrics token and answers a facemint series through its
query API, where every expression of the rules and dashboards also parses.

The configuration names its files under /etc/prometheus (where compose mounts docker/prometheus): the checks run on
a copy of the directory with that prefix pointed at the copy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from redis import Redis

from tests.conftest import make_settings
from tests.jobs.conftest import wait_for
from tests.test_observability_config import PROMETHEUS_DIR, all_expressions

ROOT = Path(__file__).resolve().parents[1]
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
CONTAINER_DIR = "/etc/prometheus/"
METRICS_TOKEN = "prometheus-test-metrics-token-0123456789"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` is missing: `make test` installs it (Debian's `prometheus` package, which ships `prometheus` "
            "and `promtool`: apt-get install prometheus)",
            pytrace=False,
        )
    return found


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    """docker/prometheus copied, with the metrics token file the configuration reads and /etc/prometheus/ pointed
    at the copy; returns the copied prometheus.yml."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    (copy / "metrics-token").write_text(METRICS_TOKEN)
    config = copy / "prometheus.yml"
    config.write_text(config.read_text().replace(CONTAINER_DIR, f"{copy}/"))
    return config


# --- promtool --------------------------------------------------------------------------------------------------


def test_promtool_accepts_the_configuration_and_the_rules_it_loads(config_copy: Path) -> None:
    checked = promtool("check", "config", config_copy)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in checked.stdout, checked.stdout


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    broken = yaml.safe_load(ALERTS.read_text())
    broken["groups"][0]["rules"][0]["expr"] = "facemint_jobs >"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(broken))
    assert promtool("check", "rules", tmp_path / "alerts.yml").returncode != 0


def test_every_alert_fires_in_its_unit_tests_and_not_otherwise() -> None:
    ran = promtool("test", "rules", ALERTS_TEST)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def _alert_names() -> set[str]:
    return {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}


def test_the_unit_tests_cover_every_alert_firing_and_silent() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert firing == _alert_names()
    assert silent == _alert_names()


# --- a live Prometheus scraping a live API -----------------------------------------------------------------------


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture
def api_url(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[str]:
    """`facemint serve` as prod runs it: prod mode, real secrets, /metrics behind FACEMINT_METRICS_TOKEN."""
    settings = make_settings(database_url, redis_url)
    assert settings.jwt_secret is not None
    assert settings.api_key_pepper is not None
    port = free_port()
    env = {
        **os.environ,
        "FACEMINT_ENV": "prod",
        "FACEMINT_DATABASE_URL": database_url,
        "FACEMINT_REDIS_URL": redis_url,
        "FACEMINT_DATA_DIR": str(tmp_path / "api-data"),
        "FACEMINT_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "FACEMINT_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value(),
        "FACEMINT_METRICS_TOKEN": METRICS_TOKEN,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "facemint.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/healthz", process), timeout=60, interval=0.1)
        yield url
    finally:
        _stop(process)


def _answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"{process.args} exited with {process.returncode}"
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def prometheus_url(api_url: str, config_copy: Path, tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus on loopback with the repository's configuration, scraping every second, its target the
    live API (the token from the credentials file, as in prod) and its rules the repository's."""
    config = yaml.safe_load(config_copy.read_text())
    config["global"] = {**config["global"], "scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [api_url.removeprefix("http://")]}]
    config_copy.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={config_copy}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/-/ready", process), timeout=60, interval=0.1)
        yield url
    finally:
        _stop(process)


def query(prometheus: httpx.Client, expr: str) -> list[dict[str, Any]]:
    response = prometheus.get("/api/v1/query", params={"query": expr})
    body: dict[str, Any] = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    assert response.status_code == 200
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def values(prometheus: httpx.Client, expr: str) -> list[float]:
    return [float(sample["value"][1]) for sample in query(prometheus, expr)]


def test_prometheus_scrapes_a_live_api_with_the_token_and_reads_a_series_back(
    prometheus_url: str, redis_client: Redis
) -> None:
    redis_client.rpush("rq:queue:swaps", "a", "b", "c")  # what the API reads as the queue's depth

    with httpx.Client(base_url=prometheus_url, timeout=5) as prometheus:
        try:
            # Prometheus hands a new target to its scraper after up to 5 s, then scrapes it every second.
            wait_for(lambda: values(prometheus, 'facemint_queue_depth{queue="swaps"}') == [3.0], timeout=30)
        except AssertionError:
            targets = prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
            raise AssertionError(f"no facemint series; the targets: {targets}") from None
        assert values(prometheus, 'up{job="facemint-api"}') == [1.0]
        assert values(prometheus, 'facemint_metrics_source_up{source="postgres"}') == [1.0]
        for expr in all_expressions():  # the rules' and the dashboards', parsed and run by the real thing
            query(prometheus, expr)
