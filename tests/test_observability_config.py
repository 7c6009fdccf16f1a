"""docker/prometheus and docker/grafana against the app they watch: every metric that an alert rule or a dashboard
queries is a family the API's live `GET /metrics` really exposes (so a renamed metric breaks this test, not a
silent panel or an alert that can never fire), every alert has a `for`, a severity and a summary, the scrape job
points at the API, and the dashboards use the provisioned data source.

Docker is not needed: the files are parsed with PyYAML and json; /metrics is read from the app on the test
Postgres and Redis."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from facemint.app import create_app
from facemint.config import Settings
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
GRAFANA_DIR = ROOT / "docker" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
SEVERITIES = {"critical", "warning", "info"}
# Series that Prometheus makes itself for every target, not the app.
PROMETHEUS_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: `facemint_*` identifiers and `up`, with label matchers,
    strings and ranges taken out first (so label values and names such as `status` or `le` are not counted)."""
    bare = _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub(" ", expr)))
    names = set(_IDENTIFIER.findall(bare))
    return {name for name in names if name.startswith("facemint_") or name in PROMETHEUS_SERIES}


def family_of(name: str, families: dict[str, str]) -> str | None:
    """The exposed family a queried name belongs to: itself, or a histogram's `_bucket`/`_sum`/`_count` series."""
    if name in families or name in PROMETHEUS_SERIES:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) == "histogram":
            return base
    return None


def unknown_metrics(expressions: list[str], families: dict[str, str]) -> set[str]:
    return {name for expr in expressions for name in metric_names(expr) if family_of(name, families) is None}


def _yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


def _rules() -> list[dict[str, Any]]:
    rules = [rule for group in _yaml(PROMETHEUS_DIR / "alerts.yml")["groups"] for rule in group["rules"]]
    assert rules
    return rules


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # rows hold their own panels
    return panels


def _dashboard_expressions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        found[path.name] = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]
    return found


def all_expressions() -> list[str]:
    return [str(rule["expr"]) for rule in _rules()] + [e for exprs in _dashboard_expressions().values() for e in exprs]


@pytest.fixture(scope="module")
def families(database_url: str, redis_url: str) -> dict[str, str]:
    """Family name -> type, from the `# TYPE` lines of one live scrape (the test settings serve /metrics
    without a token). Families are declared even when they have no samples yet."""
    settings: Settings = make_settings(database_url, redis_url)
    with TestClient(create_app(settings)) as client:
        client.get("/healthz")
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    exposed = dict(_TYPE_LINE.findall(response.text))
    assert "facemint_http_requests_total" in exposed
    return exposed


def test_every_queried_metric_is_exposed_by_the_app(families: dict[str, str]) -> None:
    expressions = all_expressions()
    queried = {name for expr in expressions for name in metric_names(expr)}
    assert len(queried) >= 8, queried  # the extraction finds the metrics, not nothing
    assert unknown_metrics(expressions, families) == set()


def test_a_query_for_a_missing_metric_is_caught(families: dict[str, str]) -> None:
    doctored = 'sum(rate(facemint_http_requests_totl{status=~"5.."}[5m])) / facemint_tokens_held'
    assert unknown_metrics([doctored], families) == {"facemint_http_requests_totl"}
    # A suffix is only stripped from a histogram: a counter has no `_bucket`.
    assert unknown_metrics(["facemint_jobs_bucket", "facemint_engine_stage_seconds_bucket"], families) == {
        "facemint_jobs_bucket"
    }
    # Names inside label matchers and strings are not metrics.
    assert metric_names('up{job="facemint_api"} == 0') == {"up"}


def test_every_alert_has_for_severity_and_summary() -> None:
    names = set()
    for rule in _rules():
        assert "alert" in rule, rule
        assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
        names.add(rule["alert"])
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{rule['alert']}: no `for`"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{rule['alert']}: no severity"
        assert rule.get("annotations", {}).get("summary"), f"{rule['alert']}: no summary"
    assert any(metric_names(str(rule["expr"])) == {"up"} for rule in _rules()), "no target-down alert"


def test_prometheus_scrapes_the_api_with_a_token_and_loads_the_rules() -> None:
    config = _yaml(PROMETHEUS_DIR / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file(), rule_file
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"]
    compose = _yaml(ROOT / "docker-compose.yml")
    api_port = str(compose["services"]["api"]["command"][-1])
    # Every replica of the `api` service, found through Docker's DNS (the name answers with each one's address).
    assert "static_configs" not in job
    assert [(sd["names"], sd["type"], str(sd["port"])) for sd in job["dns_sd_configs"]] == [(["api"], "A", api_port)]
    for rule in _rules():
        for selector in re.findall(r"\bup\{([^}]*)\}", str(rule["expr"])):
            assert f'job="{job["job_name"]}"' in selector


def test_dashboards_use_the_provisioned_datasource() -> None:
    (datasource,) = _yaml(DATASOURCES_FILE)["datasources"]
    assert datasource["type"] == "prometheus"
    assert {path.name for path in DASHBOARDS} >= {"money.json", "jobs.json", "api.json"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert isinstance(dashboard.get("schemaVersion"), int), path.name
        assert dashboard.get("uid"), path.name
        assert dashboard.get("title"), path.name
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        panels = _panels(dashboard)
        assert panels, path.name
        for panel in panels:
            for target in panel.get("targets", []):
                assert target["expr"].strip(), f"{path.name}: {panel['title']}"
                source = target.get("datasource") or panel.get("datasource")
                assert source == {"type": "prometheus", "uid": datasource["uid"]}, f"{path.name}: {panel['title']}"
    assert all(_dashboard_expressions().values())
