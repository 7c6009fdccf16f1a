"""`GET /metrics`: the Prometheus text format, request counts by route template, the engine's stage timings and the
workers' heartbeats from Redis, the job, token, overdue-hold, webhook and reconciliation series from Postgres, and
who may read it."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from facemint.app import create_app
from facemint.config import Settings
from facemint.db import make_engine, make_sessionmaker
from facemint.metrics import (
    ENGINE_BUCKETS,
    HTTP_BUCKETS,
    WORKER_HEARTBEAT_RETENTION_SECONDS,
    RequestMetrics,
    _Exposition,
    escape_label_value,
    forget_worker,
    install_metrics,
    record_stage_timings,
    record_worker_heartbeat,
)
from facemint.reports import service as reports
from facemint.reports.orm import ReconciliationRun
from facemint.users.orm import Role
from tests.conftest import make_settings
from tests.factories import create_user, fund
from tests.platform.conftest import MakeCaller

METRICS_TOKEN = "metrics-token-0123456789abcdef0123456789"
PROD_SECRETS = {
    "env": "prod",
    "jwt_secret": "prod-jwt-secret-0123456789abcdef0123456789",
    "api_key_pepper": "prod-pepper-0123456789abcdef0123456789abcd",
}

# --- a small parser for the text format (version 0.0.4) ---------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Scrape:
    types: dict[str, str]
    samples: list[Sample]

    def find(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        found = self.find(name, **labels)
        assert len(found) == 1, f"{name} {labels}: {found}"
        return found[0].value


def _labels(raw: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(raw):
        match = _LABEL.match(raw, position)
        assert match, f"bad labels at {raw[position:]!r}"
        labels[match.group(1)] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], match.group(2))
        position = match.end()
    return labels


def parse(body: str) -> Scrape:
    """Parses and checks the format: HELP then TYPE before a family's samples, every family once and whole,
    sample names that belong to their family, values that are numbers."""
    assert body.endswith("\n")
    types: dict[str, str] = {}
    samples: list[Sample] = []
    current: str | None = None
    for line in body.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in types, f"family {name} appears twice"
            current = None
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            types[name] = kind
            current = name
        else:
            match = _SAMPLE.match(line)
            assert match, f"bad line {line!r}"
            name, raw_labels, raw_value = match.groups()
            assert current is not None, f"sample before its TYPE: {line!r}"
            allowed = {current} | (
                {f"{current}_bucket", f"{current}_sum", f"{current}_count"} if types[current] == "histogram" else set()
            )
            assert name in allowed, f"{name} outside its family {current}"
            value = float(raw_value)  # accepts +Inf, -Inf and NaN as the format writes them
            samples.append(Sample(name, _labels(raw_labels or ""), value))
    return Scrape(types, samples)


def check_histogram(scrape: Scrape, name: str, bounds: tuple[float, ...], **labels: str) -> list[float]:
    """The bucket counts (le ascending, +Inf last) after checking they are cumulative and end at _count."""
    buckets = scrape.find(f"{name}_bucket", **labels)
    by_le = {s.labels["le"]: s.value for s in buckets}
    assert set(by_le) == {repr(float(b)) for b in bounds} | {"+Inf"}
    counts = [by_le[repr(float(b))] for b in bounds] + [by_le["+Inf"]]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {counts}"
    assert counts[-1] == scrape.value(f"{name}_count", **labels)
    return counts


# --- fixtures ---------------------------------------------------------------------------------------------------


def _with_metrics(app: FastAPI) -> FastAPI:
    if not hasattr(app.state, "request_metrics"):  # until app.py installs it itself
        install_metrics(app)
    return app


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return _with_metrics(create_app(settings))


MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(database_url: str, redis_url: str) -> Iterator[MakeClient]:
    """`make_client(**settings overrides)`: a started client on an app of its own."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        client = TestClient(_with_metrics(create_app(make_settings(database_url, redis_url, **overrides))))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def scrape(client: TestClient, **headers: str) -> Scrape:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


# --- the format ------------------------------------------------------------------------------------------------


class TestFormat:
    def test_a_scrape_parses_and_declares_every_family(self, client: TestClient) -> None:
        result = scrape(client)
        assert result.types == {
            "facemint_http_requests_total": "counter",
            "facemint_http_request_duration_seconds": "histogram",
            "facemint_jobs": "gauge",
            "facemint_tokens_held": "gauge",
            "facemint_tokens_captured_total": "counter",
            "facemint_tokens_released_total": "counter",
            "facemint_tokens_held_past_deadline": "gauge",
            "facemint_holds_past_deadline": "gauge",
            "facemint_webhook_events_pending": "gauge",
            "facemint_reconciliation_ok": "gauge",
            "facemint_reconciliation_discrepancies": "gauge",
            "facemint_reconciliation_last_run_timestamp_seconds": "gauge",
            "facemint_queue_depth": "gauge",
            "facemint_engine_stage_seconds": "histogram",
            "facemint_workers_alive": "gauge",
            "facemint_worker_heartbeat_age_seconds": "gauge",
            "facemint_metrics_source_up": "gauge",
        }
        assert result.value("facemint_metrics_source_up", source="postgres") == 1
        assert result.value("facemint_metrics_source_up", source="redis") == 1

    def test_label_values_are_escaped(self) -> None:
        assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
        metrics = RequestMetrics()
        odd = '/x/{a"b\\c\nd}'
        metrics.observe("GET", odd, 200, 0.001)
        out = _Exposition()
        metrics.write(out)
        parsed = parse(out.render())
        assert parsed.value("facemint_http_requests_total", route=odd, status="200") == 1

    def test_unknown_methods_are_counted_as_other(self) -> None:
        metrics = RequestMetrics()
        metrics.observe("BREW", "unmatched", 405, 0.001)
        assert list(metrics.requests) == [("other", "unmatched", "405")]


# --- HTTP requests ---------------------------------------------------------------------------------------------


class TestRequests:
    def test_the_route_label_is_the_template_and_statuses_are_counted(
        self, client: TestClient, make_caller: MakeCaller
    ) -> None:
        member = make_caller(Role.member)
        operator = make_caller(Role.operator)
        assert client.get("/v1/balance", headers=member.headers).status_code == 200
        assert client.get("/v1/balance", headers=member.headers).status_code == 200
        assert client.get("/v1/balance").status_code == 401
        assert client.get("/admin/v1/tenants/987654/pool", headers=operator.headers).status_code == 404
        assert client.get("/no/such/path/123456").status_code == 404

        result = scrape(client)
        requests = "facemint_http_requests_total"
        assert result.value(requests, method="GET", route="/v1/balance", status="200") == 2
        assert result.value(requests, method="GET", route="/v1/balance", status="401") == 1
        assert result.value(requests, method="GET", route="/admin/v1/tenants/{tenant_id}/pool", status="404") == 1
        assert result.value(requests, method="GET", route="unmatched", status="404") == 1
        every_label = {v for s in result.samples for v in s.labels.values()}
        assert not any("987654" in v or "123456" in v for v in every_label), "raw paths leaked into labels"

        counts = check_histogram(
            result, "facemint_http_request_duration_seconds", HTTP_BUCKETS, method="GET", route="/v1/balance"
        )
        assert counts[-1] == 3
        assert result.value("facemint_http_request_duration_seconds_sum", method="GET", route="/v1/balance") > 0

    def test_a_scrape_counts_itself_from_the_next_one(self, client: TestClient) -> None:
        scrape(client)
        assert scrape(client).value("facemint_http_requests_total", route="/metrics", status="200") == 1

    def test_an_unhandled_error_counts_as_500(self, settings: Settings) -> None:
        app = _with_metrics(create_app(settings))

        @app.get("/boom/{n}")
        def boom(n: int) -> None:
            raise RuntimeError("boom")

        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.get("/boom/1").status_code == 500
            result = scrape(client)
        assert result.value("facemint_http_requests_total", route="/boom/{n}", status="500") == 1

    def test_each_app_keeps_its_own_counters(self, make_client: MakeClient) -> None:
        first, second = make_client(), make_client()
        first.get("/healthz")
        assert scrape(first).find("facemint_http_requests_total", route="/healthz")
        assert not scrape(second).find("facemint_http_requests_total", route="/healthz")


# --- the engine's stage timings (Redis) ------------------------------------------------------------------------


class TestEngineTimings:
    def test_recorded_timings_show_as_a_histogram_per_stage(self, client: TestClient, redis_client: Redis) -> None:
        record_stage_timings(redis_client, {"detect": 3.0, "swap": 40.0, "total": 120.0})
        record_stage_timings(redis_client, {"detect": 7.0, "total": 2000.0})
        record_stage_timings(redis_client, {"detect": math.nan, "bad name!": 1.0})  # both ignored

        result = scrape(client)
        name = "facemint_engine_stage_seconds"
        assert {s.labels["stage"] for s in result.find(f"{name}_count")} == {"detect", "swap", "total"}

        detect = dict(zip(ENGINE_BUCKETS, check_histogram(result, name, ENGINE_BUCKETS, stage="detect"), strict=False))
        assert (detect[0.001], detect[0.005], detect[0.01], detect[10.0]) == (0, 1, 2, 2)
        assert result.value(f"{name}_sum", stage="detect") == pytest.approx(0.010)

        total = dict(zip(ENGINE_BUCKETS, check_histogram(result, name, ENGINE_BUCKETS, stage="total"), strict=False))
        assert (total[0.1], total[0.25], total[1.0], total[2.5]) == (0, 1, 1, 2)
        assert result.value(f"{name}_count", stage="total") == 2
        assert result.value(f"{name}_sum", stage="total") == pytest.approx(2.12)
        assert result.value(f"{name}_count", stage="swap") == 1

    def test_queue_depth_is_the_rq_list_length(self, client: TestClient, redis_client: Redis) -> None:
        assert scrape(client).value("facemint_queue_depth", queue="swaps") == 0
        redis_client.rpush("rq:queue:swaps", "a", "b", "c")
        assert scrape(client).value("facemint_queue_depth", queue="swaps") == 3

    def test_recording_survives_a_redis_outage(self) -> None:
        record_stage_timings(Redis(port=1, socket_connect_timeout=0.2), {"total": 5.0})  # logged, not raised

    def test_a_scrape_survives_a_redis_outage(self, app: FastAPI) -> None:
        with TestClient(app) as client:
            app.state.redis = Redis(port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
            result = scrape(client)
        assert result.value("facemint_metrics_source_up", source="redis") == 0
        assert result.value("facemint_metrics_source_up", source="postgres") == 1
        assert not result.find("facemint_queue_depth")
        assert result.find("facemint_jobs")


# --- the workers' heartbeats (Redis) ----------------------------------------------------------------------------


class TestWorkerHeartbeats:
    def test_workers_alive_and_each_heartbeats_age(self, client: TestClient, redis_client: Redis) -> None:
        result = scrape(client)
        assert result.value("facemint_workers_alive") == 0
        assert not result.find("facemint_worker_heartbeat_age_seconds")

        now = time.time()
        record_worker_heartbeat(redis_client, "host-a:11", now=now)
        # Three missed heartbeats (5 s each by default) and then some: listed, but not alive.
        record_worker_heartbeat(redis_client, "host-b:22", now=now - 100)

        result = scrape(client)
        assert result.value("facemint_workers_alive") == 1
        assert result.value("facemint_worker_heartbeat_age_seconds", worker="host-a:11") < 100
        assert 100 <= result.value("facemint_worker_heartbeat_age_seconds", worker="host-b:22") < 1000

    def test_a_clean_stop_leaves_the_list_and_the_dead_age_out(self, client: TestClient, redis_client: Redis) -> None:
        now = time.time()
        record_worker_heartbeat(redis_client, "crashed:1", now=now - WORKER_HEARTBEAT_RETENTION_SECONDS - 1)
        record_worker_heartbeat(redis_client, "stopping:2", now=now)  # a beat drops what is past the retention
        assert {s.labels["worker"] for s in scrape(client).find("facemint_worker_heartbeat_age_seconds")} == {
            "stopping:2"
        }
        forget_worker(redis_client, "stopping:2")
        result = scrape(client)
        assert not result.find("facemint_worker_heartbeat_age_seconds")
        assert result.value("facemint_workers_alive") == 0


# --- jobs, tokens and webhooks (Postgres) ----------------------------------------------------------------------


def _hold(session: Session, account_id: int, amount: int) -> int:
    hold = ledger_holds.reserve(
        session, account_id=account_id, amount=amount, reference=uuid.uuid4().hex, ttl_seconds=600
    )
    session.commit()
    return hold.hold_id


def _insert_job(session: Session, *, user_id: int, tenant_id: int, account_id: int, hold_id: int, status: str) -> int:
    job_id: int = session.execute(
        text(
            """
            INSERT INTO jobs (public_id, tenant_id, user_id, account_id, hold_id, operation, queue, status,
                              idempotency_key, request_hash, price_version, tokens_per_unit, units, tokens_held,
                              options, input_location, max_attempts, deadline_at, finished_at)
            VALUES (:public_id, :tenant_id, :user_id, :account_id, :hold_id, 'swap.image', 'swaps', :status, :key,
                    '\\x00', 1, 1, 1, 1, '{}', 'inputs/x', 3, now() + interval '1 hour',
                    CASE WHEN :status IN ('failed', 'canceled') THEN now() END)
            RETURNING id
            """
        ),
        {
            "public_id": f"job_{uuid.uuid4().hex[:24]}",
            "tenant_id": tenant_id,
            "user_id": user_id,
            "account_id": account_id,
            "hold_id": hold_id,
            "status": status,
            "key": uuid.uuid4().hex,
        },
    ).scalar_one()
    return job_id


class TestDatabaseSeries:
    def test_all_five_job_statuses_are_always_there(self, client: TestClient) -> None:
        result = scrape(client)
        assert {s.labels["status"]: s.value for s in result.find("facemint_jobs")} == {
            "queued": 0,
            "running": 0,
            "succeeded": 0,
            "failed": 0,
            "canceled": 0,
        }
        assert result.value("facemint_tokens_held") == 0
        assert result.value("facemint_webhook_events_pending") == 0

    def test_tokens_held_captured_and_released(self, client: TestClient, session: Session) -> None:
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=100)
        _hold(session, user.account_id, 10)  # stays held
        ledger_holds.capture(session, hold_id=_hold(session, user.account_id, 20), amount=15)  # 5 come back
        ledger_holds.release(session, hold_id=_hold(session, user.account_id, 30))
        session.commit()
        ledger_holds.reserve(session, account_id=user.account_id, amount=7, reference="expired", ttl_seconds=0)
        session.commit()
        assert len(ledger_holds.expire_due_holds(session)) == 1
        session.commit()

        result = scrape(client)
        assert result.value("facemint_tokens_held") == 10
        assert result.value("facemint_tokens_captured_total") == 15
        assert result.value("facemint_tokens_released_total") == 5 + 30 + 7

    def test_holds_still_held_past_their_expiry(self, client: TestClient, session: Session) -> None:
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=100)
        _hold(session, user.account_id, 10)  # expires in ten minutes
        for amount in (3, 4):
            ledger_holds.reserve(
                session, account_id=user.account_id, amount=amount, reference=uuid.uuid4().hex, ttl_seconds=0
            )
        session.commit()

        result = scrape(client)
        assert result.value("facemint_tokens_held") == 17
        assert result.value("facemint_tokens_held_past_deadline") == 7
        assert result.value("facemint_holds_past_deadline") == 2

        assert len(ledger_holds.expire_due_holds(session)) == 2  # what every sweeper does
        session.commit()
        result = scrape(client)
        assert result.value("facemint_tokens_held_past_deadline") == 0
        assert result.value("facemint_holds_past_deadline") == 0

    def test_the_newest_reconciliation_run(self, client: TestClient, session: Session, engine: Engine) -> None:
        names = ("ok", "discrepancies", "last_run_timestamp_seconds")
        result = scrape(client)
        assert all(not result.find(f"facemint_reconciliation_{name}") for name in names)  # none recorded yet

        before = time.time()
        reports.run_and_record(session, engine=engine, requested_by="test")
        session.commit()
        result = scrape(client)
        assert result.value("facemint_reconciliation_ok") == 1
        assert result.value("facemint_reconciliation_discrepancies") == 0
        assert before - 5 <= result.value("facemint_reconciliation_last_run_timestamp_seconds") <= time.time() + 5

        session.add(ReconciliationRun(balanced=False, discrepancies=2, summary={}, requested_by="test"))
        session.commit()
        result = scrape(client)
        assert result.value("facemint_reconciliation_ok") == 0
        assert result.value("facemint_reconciliation_discrepancies") == 2

    def test_jobs_by_status_and_pending_webhooks(self, client: TestClient, session: Session) -> None:
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=100)
        assert user.tenant_id is not None
        for status in ("queued", "queued", "running", "failed"):
            hold_id = _hold(session, user.account_id, 1)
            if status == "failed":  # a failed job's hold is released (reconciliation checks it after the test)
                ledger_holds.release(session, hold_id=hold_id)
            job_id = _insert_job(
                session,
                user_id=user.id,
                tenant_id=user.tenant_id,
                account_id=user.account_id,
                hold_id=hold_id,
                status=status,
            )
        session.execute(
            text(
                "INSERT INTO webhook_events (public_id, job_id, tenant_id, event_type, url, payload, status) "
                "VALUES (:p1, :job, :tenant, 'job.failed', 'https://example.test/h', '{}', 'pending'), "
                "       (:p2, :job, :tenant, 'job.failed', 'https://example.test/h', '{}', 'delivered')"
            ),
            {"p1": uuid.uuid4().hex, "p2": uuid.uuid4().hex, "job": job_id, "tenant": user.tenant_id},
        )
        session.commit()

        result = scrape(client)
        jobs = {s.labels["status"]: s.value for s in result.find("facemint_jobs")}
        assert jobs == {"queued": 2, "running": 1, "succeeded": 0, "failed": 1, "canceled": 0}
        assert result.value("facemint_webhook_events_pending") == 1

    def test_a_scrape_survives_a_postgres_outage(self, app: FastAPI) -> None:
        with TestClient(app) as client:
            app.state.sessionmaker = make_sessionmaker(make_engine("postgresql://nobody@127.0.0.1:1/none"))
            result = scrape(client)
        assert result.value("facemint_metrics_source_up", source="postgres") == 0
        assert result.value("facemint_metrics_source_up", source="redis") == 1
        assert not result.find("facemint_jobs")
        assert result.find("facemint_queue_depth")


# --- who may read it -------------------------------------------------------------------------------------------


class TestAccess:
    def test_open_in_dev_without_a_token(self, make_client: MakeClient) -> None:
        assert make_client().get("/metrics").status_code == 200

    @pytest.mark.parametrize("env", [{"env": "dev"}, PROD_SECRETS])
    def test_a_configured_token_is_required(self, make_client: MakeClient, env: dict[str, str]) -> None:
        client = make_client(metrics_token=METRICS_TOKEN, **env)
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {METRICS_TOKEN}"},
            {"Authorization": f"Bearer {METRICS_TOKEN}x"},
            {"Authorization": "Bearer "},
        ):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        result = scrape(client, Authorization=f"Bearer {METRICS_TOKEN}")
        # The refused scrapes are counted too (the route is known even when access is not).
        assert result.value("facemint_http_requests_total", route="/metrics", status="401") == 5

    def test_hidden_in_prod_without_a_token(self, make_client: MakeClient) -> None:
        client = make_client(**PROD_SECRETS)
        response = client.get("/metrics")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 404
