"""The ledger invariants every test leaves intact, checked with the same reconciliation the product ships."""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from facemint.reports.service import reconcile_all


def assert_ledger_invariants(conn: Connection) -> None:
    """Every transaction sums to zero; each balance equals its entries and each balance-after follows the
    one before; held equals the open holds; nothing is below zero; tokens are conserved; jobs agree with their
    holds."""
    with Session(bind=conn) as session:
        report = reconcile_all(session)
    assert report.balanced, "ledger invariants broken: " + "; ".join(
        f"{d.check} ids={d.ids[:10]} details={d.details[:10]}" for d in report.discrepancies
    )


# I4, as the tests can hold it: the test workers sweep every 0.2 s, and a test that lets a job's deadline pass
# sweeps before it ends. So no hold may still be held once its job's deadline is this far behind.
DEADLINE_SLACK_SECONDS = 10


def assert_no_hold_outlives_its_job(conn: Connection) -> None:
    """I4: no hold still `held` once its job is terminal (also `job_hold_state`), or once the job's deadline and
    a sweep have passed."""
    stuck = conn.execute(
        text(
            """
            SELECT j.public_id, j.status FROM jobs j JOIN holds h ON h.id = j.hold_id
            WHERE h.status = 'held'
              AND (j.status IN ('succeeded', 'failed', 'canceled')
                   OR j.deadline_at < now() - make_interval(secs => :slack))
            """
        ),
        {"slack": DEADLINE_SLACK_SECONDS},
    ).all()
    assert stuck == [], f"holds still held after their job ended or its deadline passed: {stuck[:10]}"
