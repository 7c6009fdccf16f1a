"""`facemint reconcile` also proves that jobs and their holds agree: each check fires on a planted mismatch."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from facemint.reports.service import reconcile_all
from tests.jobs.conftest import job_row, submit


def _failing_checks(engine: DbEngine) -> set[str]:
    with Session(engine) as session:
        return {d.check for d in reconcile_all(session).discrepancies}


def test_a_healthy_job_passes_every_job_check(job_client: Any, make_payer: Any, engine: DbEngine) -> None:
    payer = make_payer(3)
    assert submit(job_client, payer).status_code == 202
    with Session(engine) as session:
        report = reconcile_all(session)
    assert {
        "job_hold_state",
        "job_hold_terms",
        "job_capture_count",
        "captured_hold_without_charged_job",
        "job_hold_without_job",
    } <= set(report.checks_run)
    assert report.balanced


@pytest.mark.no_invariants
def test_a_queued_job_whose_hold_was_released_is_reported(
    job_client: Any, make_payer: Any, engine: DbEngine, session: Session
) -> None:
    payer = make_payer(3)
    job = job_row(engine, submit(job_client, payer).json()["id"])
    ledger_holds.release(session, hold_id=job.hold_id)  # behind the job's back
    session.commit()
    assert "job_hold_state" in _failing_checks(engine)


@pytest.mark.no_invariants
def test_a_hold_reserved_for_a_job_that_was_never_recorded_is_reported(
    make_payer: Any, engine: DbEngine, session: Session
) -> None:
    payer = make_payer(3)
    ledger_holds.reserve(session, account_id=payer.account_id, amount=1, reference="job:job_ghost", ttl_seconds=60)
    session.commit()
    assert _failing_checks(engine) == {"job_hold_without_job"}


@pytest.mark.no_invariants
def test_a_job_charged_other_than_its_hold_is_reported(
    job_client: Any, make_payer: Any, engine: DbEngine, owner_engine: DbEngine, drain: Any
) -> None:
    payer = make_payer(3)
    public_id = submit(job_client, payer).json()["id"]
    drain()
    with owner_engine.begin() as conn:
        # Test-only: replica mode skips the one-way trigger, to plant what the trigger prevents.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text("UPDATE jobs SET status = 'failed', tokens_captured = NULL WHERE public_id = :id"), {"id": public_id}
        )
    assert {"job_hold_state", "job_capture_count", "captured_hold_without_charged_job"} <= _failing_checks(engine)
