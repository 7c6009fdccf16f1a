"""The reports API the console's dashboard stands on: GET /admin/v1/reports/dashboard, the recorded
reconciliation runs (POST/GET /admin/v1/reconciliation/runs, `facemint reconcile`'s own record, and the workers'
periodic run), and the sealed books (GET/POST /admin/v1/ledger/seals), with who may do what."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.sealing import service as sealing
from facemint.reports import dashboard
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import MakeCaller
from tests.platform.test_cli import cli_env, invoke  # noqa: F401  (cli_env: the CLI's fixture, used by name)
from tests.platform.test_finance import make_job


class TestDashboard:
    def test_figures_for_staff_and_for_a_tenant_admin(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        mine, other = create_tenant(session, name="api-mine"), create_tenant(session, name="api-other")
        alice, bob = create_user(session, tenant=mine), create_user(session, tenant=other)
        fund(session, account_id=alice.account_id, amount=20)
        fund(session, account_id=bob.account_id, amount=70)
        make_job(session, alice, outcome="succeeded", units=2)
        make_job(session, bob, outcome="queued", units=3)
        make_job(session, bob, outcome="failed", units=1)
        staff = make_caller(Role.finance)

        body = client.get("/admin/v1/reports/dashboard", headers=staff.headers, params={"tz": "Europe/Paris"}).json()
        charts = body["charts"]
        assert charts["zone"] == "Europe/Paris"
        assert len(charts["days"]) == 30
        assert len(charts["hours"]) == 48
        assert sum(d["recharged"] for d in charts["days"]) == 90
        assert sum(d["consumed"] for d in charts["days"]) == 2
        jobs = {s: sum(h["counts"][s] for h in charts["hours"]) for s in charts["statuses"]}
        assert jobs == {"queued": 1, "running": 0, "succeeded": 1, "failed": 1, "canceled": 0}
        assert [t["name"] for t in charts["top_tenants"]] == ["api-mine"]
        assert (body["tokens_held"], body["jobs_queued"], body["tenant_id"]) == (3, 1, None)
        assert body["queue_length"] == 0
        assert body["sealed_books"] == []
        assert body["last_reconciliation"] is None

        admin = make_caller(Role.tenant_admin, mine)
        own = client.get("/admin/v1/reports/dashboard", headers=admin.headers).json()
        assert own["tenant_id"] == mine.id
        assert sum(d["recharged"] for d in own["charts"]["days"]) == 20
        assert (own["tokens_held"], own["jobs_queued"]) == (0, 0)
        assert own["charts"]["top_tenants"] == []
        assert own["queue_length"] is None
        assert own["last_reconciliation"] is None
        assert own["sealed_books"] is None

    def test_the_charts_are_cached_briefly_and_fresh_recomputes(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        staff = make_caller(Role.operator)
        user = create_user(session, tenant=create_tenant(session))
        first = client.get("/admin/v1/reports/dashboard", headers=staff.headers).json()["charts"]
        fund(session, account_id=user.account_id, amount=9)
        cached = client.get("/admin/v1/reports/dashboard", headers=staff.headers).json()
        assert cached["charts"] == first, "the aggregates come from the cache"
        assert sum(d["recharged"] for d in cached["charts"]["days"]) == 0
        fresh = client.get("/admin/v1/reports/dashboard", headers=staff.headers, params={"fresh": "true"}).json()
        assert sum(d["recharged"] for d in fresh["charts"]["days"]) == 9
        assert dashboard.CHARTS_CACHE_SECONDS <= 60

    def test_an_unknown_zone_is_422(self, client: TestClient, make_caller: MakeCaller) -> None:
        response = client.get(
            "/admin/v1/reports/dashboard", headers=make_caller(Role.operator).headers, params={"tz": "Mars/Olympus"}
        )
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_time_zone"

    def test_day_buckets_follow_the_zone(self, client: TestClient, make_caller: MakeCaller) -> None:
        body = client.get(
            "/admin/v1/reports/dashboard", headers=make_caller(Role.operator).headers, params={"tz": "Asia/Kolkata"}
        ).json()
        last = body["charts"]["days"][-1]
        start = datetime.fromisoformat(last["start"])
        assert (start.astimezone(UTC).hour, start.astimezone(UTC).minute) == (18, 30)  # midnight in Kolkata
        hour = datetime.fromisoformat(body["charts"]["hours"][-1]["start"]).astimezone(UTC)
        assert hour.minute == 30


class TestReconciliationRuns:
    def test_a_run_is_recorded_and_listed_newest_first(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        finance, operator = make_caller(Role.finance), make_caller(Role.operator)
        refused = client.post("/admin/v1/reconciliation/runs", headers=finance.headers)
        assert refused.status_code == 403  # finance reads the runs and never writes one
        created = [client.post("/admin/v1/reconciliation/runs", headers=operator.headers) for _ in range(2)]
        assert [r.status_code for r in created] == [201, 201]
        run = created[1].json()
        assert run["balanced"] is True
        assert run["discrepancies"] == 0
        key_id = session.execute(
            text("SELECT id FROM api_keys WHERE user_id = :u"), {"u": operator.user.id}
        ).scalar_one()
        assert run["requested_by"] == f"key:{key_id}"  # the API key it was asked with
        assert "balance_mismatch" in run["summary"]["checks"]
        listed = client.get("/admin/v1/reconciliation/runs", headers=finance.headers, params={"limit": 1}).json()
        assert [r["id"] for r in listed["items"]] == [run["id"]]
        assert listed["next_cursor"]
        last = client.get("/admin/v1/reports/dashboard", headers=finance.headers).json()["last_reconciliation"]
        assert last["id"] == run["id"]

    def test_a_broken_ledger_is_recorded_as_unbalanced(self, session: Session) -> None:
        from billing.reports.reconcile import Discrepancy, ReconciliationReport
        from facemint.reports import service

        report = ReconciliationReport(
            checks_run=["x"], discrepancies=[Discrepancy("x", "d", list(range(50)), [1] * 50)]
        )
        run = service.record_run(session, report=report, requested_by="test")
        session.commit()
        assert run.balanced is False
        assert run.discrepancies == 1
        assert len(run.summary["discrepancies"][0]["ids"]) == service.SUMMARY_IDS

    @pytest.mark.parametrize("role", [Role.tenant_admin, Role.member])
    def test_tenant_roles_cannot_run_or_list_it(
        self, client: TestClient, session: Session, make_caller: MakeCaller, role: Role
    ) -> None:
        caller = make_caller(role, create_tenant(session))
        assert client.post("/admin/v1/reconciliation/runs", headers=caller.headers).status_code == 403
        assert client.get("/admin/v1/reconciliation/runs", headers=caller.headers).status_code == 403
        assert session.execute(text("SELECT count(*) FROM reconciliation_runs")).scalar_one() == 0


class TestPeriodicRun:
    def _runs(self, session: Session) -> list[str]:
        return list(session.scalars(text("SELECT requested_by FROM reconciliation_runs ORDER BY id")))

    def test_runs_when_the_newest_run_is_as_old_as_the_interval(self, session: Session, engine: Engine) -> None:
        from facemint.reports import service

        first = service.reconcile_when_due(session, engine=engine, interval_seconds=900)
        session.commit()
        assert first is not None
        assert first.balanced
        assert service.reconcile_when_due(session, engine=engine, interval_seconds=900) is None
        session.commit()
        assert self._runs(session) == ["worker"]
        assert service.reconcile_when_due(session, engine=engine, interval_seconds=0) is not None
        session.commit()
        assert self._runs(session) == ["worker", "worker"]

    def test_a_run_asked_for_by_anyone_counts(self, session: Session, engine: Engine) -> None:
        from facemint.reports import service

        service.run_and_record(session, engine=engine, requested_by="cli")
        session.commit()
        assert service.reconcile_when_due(session, engine=engine, interval_seconds=900) is None
        session.commit()
        assert self._runs(session) == ["cli"]

    def test_one_process_at_a_time(self, session: Session, engine: Engine) -> None:
        from facemint.reports import service

        with engine.connect() as other, other.begin():
            other.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": service.PERIODIC_LOCK})
            assert service.reconcile_when_due(session, engine=engine, interval_seconds=900) is None
            session.commit()
        assert self._runs(session) == []


class TestSeals:
    def test_operators_seal_and_everyone_on_staff_reads_the_heads(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        user = create_user(session, tenant=create_tenant(session))
        fund(session, account_id=user.account_id, amount=4)
        operator, finance = make_caller(Role.operator), make_caller(Role.finance)
        assert client.post("/admin/v1/ledger/seals", headers=finance.headers).status_code == 403
        sealed = client.post("/admin/v1/ledger/seals", headers=operator.headers)
        assert sealed.status_code == 200, sealed.text
        body = sealed.json()
        assert body["sealed"]["ledger_entries"] >= 2
        assert body["caught_up"] is True
        heads = client.get("/admin/v1/ledger/seals", headers=finance.headers).json()
        assert {h["stream"] for h in heads} == {s["stream"] for s in body["streams"]}
        assert sealing.verify(session).intact
        again = client.post("/admin/v1/ledger/seals", headers=operator.headers).json()
        assert sum(again["sealed"].values()) == 0
        assert again["batches"] == 0

    def test_a_busy_sealer_answers_409(
        self, client: TestClient, session: Session, make_caller: MakeCaller, engine: Engine
    ) -> None:
        operator = make_caller(Role.operator)
        with engine.connect() as other, other.begin():
            other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": sealing.SEALER_LOCK})
            response = client.post("/admin/v1/ledger/seals", headers=operator.headers)
        assert response.status_code == 409
        assert response.json()["code"] == "sealer_busy"


class TestCli:
    def test_facemint_reconcile_records_its_run(self, request: pytest.FixtureRequest, session: Session) -> None:
        assert invoke(request.getfixturevalue("cli_env"), "reconcile").exit_code == 0
        run = session.execute(text("SELECT balanced, requested_by FROM reconciliation_runs")).one()
        assert run.balanced
        assert run.requested_by == "cli"
