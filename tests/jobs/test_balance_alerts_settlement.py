"""Low-balance alerts and jobs: a submit's hold lowers available without an evaluation (the submit path is
unchanged); the worker's settlement evaluates the job's account in its own transaction (a capture fires what the
hold crossed, a release re-arms), and the sweeper's periodic pass catches whatever no settlement saw, once, however
many sweepers run at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from facemint.balance_alerts import evaluation
from facemint.config import Settings
from facemint.db import make_sessionmaker, unit_of_work
from facemint.storage import make_storage
from facemint.tenants.orm import Tenant
from facemint.worker import tasks
from tests.factories import create_tenant
from tests.jobs.conftest import Payer, blank_png, job_row, submit
from tests.platform.balance_alert_helpers import alert_of, low_balance_events, name_events_url


@pytest.fixture
def tenant(session: Session) -> Tenant:
    tenant = create_tenant(session)
    name_events_url(session, tenant.id)
    return tenant


@pytest.fixture
def run_job(job_settings: Settings, engine: DbEngine, demo_engine: Any) -> Iterator[Callable[[str], str]]:
    """`run_job(public_id)`: the worker's job, run here as RQ runs it in `facemint worker`, without the worker's
    background sweeper (which would evaluate the alerts first)."""
    redis = Redis.from_url(job_settings.require_urls()[1])
    previous = tasks._context
    tasks.install(
        tasks.WorkerContext(
            settings=job_settings,
            sessions=make_sessionmaker(engine),
            redis=redis,
            storage=make_storage(job_settings),
            engine=demo_engine,
            worker_id="test-alerts",
        )
    )
    yield tasks.run_job
    tasks._context = previous
    redis.close()


def set_alert(client: TestClient, payer: Payer, **body: int) -> dict[str, Any]:
    response = client.put("/v1/balance/alert", json=body, headers=payer.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def accepted(client: TestClient, payer: Payer, **files: bytes) -> str:
    response = submit(client, payer, **files)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def capture_time(engine: DbEngine, public_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT t.created_at FROM ledger_transactions t JOIN jobs j ON j.hold_id = t.hold_id "
                "WHERE j.public_id = :id"
            ),
            {"id": public_id},
        ).scalar_one()


def test_holds_at_submit_fire_nothing_and_the_first_capture_fires_once_in_its_own_transaction(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session: Session,
    engine: DbEngine,
    tenant: Tenant,
    run_job: Callable[[str], str],
) -> None:
    payer = make_payer(3, tenant=tenant)
    assert set_alert(job_client, payer, threshold=3, hysteresis=0)["armed"] is True
    first, second = accepted(job_client, payer), accepted(job_client, payer)
    assert low_balance_events(session, tenant.id) == []  # available is 1, but no submit evaluates
    assert run_job(first) == "succeeded"
    [event] = low_balance_events(session, tenant.id)
    assert event == {
        "account": "user",
        "tenant_id": tenant.id,
        "user_id": payer.user_id,
        "available": 1,
        "threshold": 3,
        "rearm_at": 3,
    }
    # now() is the transaction's start: the alert fired in the capture's transaction.
    assert alert_of(session, payer.account_id).fired_at == capture_time(engine, first)
    assert run_job(second) == "succeeded"
    assert len(low_balance_events(session, tenant.id)) == 1
    assert job_row(engine, second).tokens_captured == 1


def test_a_failed_jobs_release_rearms_in_its_settlement(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session: Session,
    engine: DbEngine,
    tenant: Tenant,
    sweep: Callable[..., Any],
    run_job: Callable[[str], str],
) -> None:
    payer = make_payer(2, tenant=tenant)
    set_alert(job_client, payer, threshold=2, hysteresis=0)
    job = accepted(job_client, payer, target=blank_png())  # no face: fails, never charged
    assert sweep().alerts_fired == 1
    assert alert_of(session, payer.account_id).armed is False
    assert run_job(job) == "failed"
    alert = alert_of(session, payer.account_id)
    assert alert.armed is True
    assert alert.rearmed_at == job_row(engine, job).finished_at  # the release's transaction


def test_the_sweeper_fires_for_a_drop_from_holds_once_and_rearms_after_the_releases(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session: Session,
    tenant: Tenant,
    sweep: Callable[..., Any],
) -> None:
    payer = make_payer(10, tenant=tenant)
    set_alert(job_client, payer, threshold=8, hysteresis=1)
    jobs = [accepted(job_client, payer) for _ in range(3)]  # available 7
    assert low_balance_events(session, tenant.id) == []
    report = sweep()
    assert (report.alerts_fired, report.alerts_rearmed) == (1, 0)
    assert [e["available"] for e in low_balance_events(session, tenant.id)] == [7]
    assert sweep().alerts_fired == 0
    for job in jobs:  # queued: canceled and released at once, by the request (which evaluates nothing)
        response = job_client.post(f"/v1/jobs/{job}/cancel", headers=payer.headers)
        assert response.status_code == 200, response.text
    assert alert_of(session, payer.account_id).armed is False
    report = sweep()
    assert (report.alerts_fired, report.alerts_rearmed) == (0, 1)
    accepted(job_client, payer)
    accepted(job_client, payer)
    accepted(job_client, payer)  # 7 again: the next crossing
    assert sweep().alerts_fired == 1
    assert len(low_balance_events(session, tenant.id)) == 2


def test_sweepers_running_at_once_fire_a_crossing_exactly_once(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session: Session,
    session_factory: sessionmaker[Session],
    tenant: Tenant,
) -> None:
    payers = [make_payer(5, tenant=tenant) for _ in range(20)]
    for payer in payers:
        set_alert(job_client, payer, threshold=5)
        accepted(job_client, payer)  # available 4 on each
    barrier = threading.Barrier(4)
    fired: list[int] = []
    errors: list[BaseException] = []

    def sweeper() -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(5):
                with unit_of_work(session_factory) as s:
                    fired.append(evaluation.sweep(s, limit=3).fired)  # small batches: the passes interleave
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(fired) == len(payers)
    events = low_balance_events(session, tenant.id)
    assert sorted(e["user_id"] for e in events) == sorted(p.user_id for p in payers)
