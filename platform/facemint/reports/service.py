"""The reconciliation the product runs (`facemint reconcile`, GET /admin/v1/reconciliation, and the tests after
every test): billing's checks over the ledger, plus the service's checks that jobs and their holds agree."""

from __future__ import annotations

from sqlalchemy.orm import Session

from billing.reports.reconcile import ReconciliationReport, reconcile

JOB_CHECKS: dict[str, tuple[str, str]] = {
    "job_hold_state": (
        "a succeeded job's hold is captured for what the job charged; a failed or canceled job's hold is released; "
        "a queued or running job's hold is still held",
        """
        SELECT j.id, j.status || '/' || h.status AS detail FROM jobs j JOIN holds h ON h.id = j.hold_id
        WHERE (j.status = 'succeeded'
               AND (h.status <> 'captured' OR h.captured_amount IS DISTINCT FROM j.tokens_captured))
           OR (j.status IN ('failed', 'canceled') AND h.status NOT IN ('released', 'expired'))
           OR (j.status IN ('queued', 'running') AND h.status <> 'held')
        """,
    ),
    "job_hold_terms": (
        "a job's hold is on the job's account, for the job's price",
        """
        SELECT j.id, j.tokens_held - h.amount AS detail FROM jobs j JOIN holds h ON h.id = j.hold_id
        WHERE h.amount <> j.tokens_held OR h.account_id <> j.account_id
              OR j.tokens_held <> j.tokens_per_unit * j.units
        """,
    ),
    "job_capture_count": (
        "a succeeded job was charged by exactly one capture transaction, any other job by none",
        """
        SELECT j.id, count(t.id) AS detail FROM jobs j
        LEFT JOIN ledger_transactions t ON t.hold_id = j.hold_id AND t.kind = 'capture'
        GROUP BY j.id, j.status
        HAVING count(t.id) <> CASE WHEN j.status = 'succeeded' THEN 1 ELSE 0 END
        """,
    ),
    "captured_hold_without_succeeded_job": (
        "every captured job hold belongs to a succeeded job",
        """
        SELECT h.id, coalesce(j.status, 'no job') AS detail FROM holds h
        LEFT JOIN jobs j ON j.hold_id = h.id
        WHERE h.status = 'captured' AND h.reference LIKE 'job:%' AND (j.id IS NULL OR j.status <> 'succeeded')
        """,
    ),
    "hold_held_past_its_bound": (
        "no hold stays held past its own expiry (the job's deadline plus a margin) by more than a minute: every "
        "worker's sweeper releases a due hold within one sweep, so one held longer means no sweeper is running",
        """
        SELECT h.id, h.reference AS detail FROM holds h
        WHERE h.status = 'held' AND h.expires_at < now() - interval '1 minute'
        """,
    ),
    "job_hold_without_job": (
        "every hold made for a job belongs to a recorded job",
        """
        SELECT h.id, h.reference AS detail FROM holds h
        WHERE h.reference LIKE 'job:%' AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.hold_id = h.id)
        """,
    ),
}


def reconcile_all(session: Session) -> ReconciliationReport:
    return reconcile(session, extra_checks=JOB_CHECKS)
