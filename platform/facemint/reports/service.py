"""The reconciliation the product runs (`facemint reconcile`, the /admin/v1/reconciliation routes, the console's
button, and the tests after every test): billing's checks over the ledger, plus the service's checks that jobs and
their holds agree. Each run that is asked for (not the tests') is recorded in `reconciliation_runs`, and so is
each of the workers' periodic runs (`reconcile_when_due`), which `GET /metrics` reports.

Also the sealed books' status and a seal on request (`billing.sealing`), for the dashboard and its API."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from billing.reports.reconcile import ReconciliationReport, reconcile
from billing.sealing import service as sealing
from billing.sealing.orm import STREAMS
from billing.sealing.schemas import SealResult, StreamDigest
from facemint.db import snapshot_session
from facemint.grants import service as grants
from facemint.pagination import newest_first
from facemint.reports.errors import SealerBusy
from facemint.reports.orm import ReconciliationRun

# A recorded run keeps each failed check's first ids, not the whole list (a broken ledger can name thousands).
SUMMARY_IDS = 20
# A seal asked for from a request seals at most this many batches per stream (`seal_batch_max_rows` rows each);
# a larger backlog is the workers' periodic sealer's, or `facemint ledger seal`'s.
REQUEST_SEAL_MAX_BATCHES = 4
_TRY_SEALER_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
# The workers' periodic reconciliation (`reconcile_when_due`): its lock and its `requested_by`.
PERIODIC_LOCK = "periodic-reconciliation"
PERIODIC_REQUESTER = "worker"
_TRY_PERIODIC_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:lock, 0))")
# Seconds since the newest run, by the database's clock (the newest id: the primary key, one index probe).
_NEWEST_RUN_AGE = text(
    "SELECT extract(epoch FROM now() - ran_at)::float8 FROM reconciliation_runs ORDER BY id DESC LIMIT 1"
)

JOB_CHECKS: dict[str, tuple[str, str]] = {
    "job_hold_state": (
        "a charged job's hold (a success, or a video canceled mid-run) is captured for what the job charged; any "
        "other failed or canceled job's hold is released; a queued or running job's hold is still held",
        """
        SELECT j.id, j.status || '/' || h.status AS detail FROM jobs j JOIN holds h ON h.id = j.hold_id
        WHERE (j.tokens_captured IS NOT NULL
               AND (h.status <> 'captured' OR h.captured_amount IS DISTINCT FROM j.tokens_captured))
           OR (j.tokens_captured IS NULL AND j.status IN ('failed', 'canceled')
               AND h.status NOT IN ('released', 'expired'))
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
        "a succeeded job, or a video canceled mid-run that charged the seconds it processed, was charged by exactly "
        "one capture transaction, any other job by none",
        """
        SELECT j.id, count(t.id) AS detail FROM jobs j
        LEFT JOIN ledger_transactions t ON t.hold_id = j.hold_id AND t.kind = 'capture'
        GROUP BY j.id, j.status, j.tokens_captured
        HAVING count(t.id) <> CASE WHEN j.status = 'succeeded' OR j.tokens_captured IS NOT NULL THEN 1 ELSE 0 END
        """,
    ),
    "captured_hold_without_charged_job": (
        "every captured job hold belongs to a job that charged: a succeeded one, or a canceled one that kept the "
        "part it processed (its charge a whole number of units, and a result)",
        """
        SELECT h.id, coalesce(j.status, 'no job') AS detail FROM holds h
        LEFT JOIN jobs j ON j.hold_id = h.id
        WHERE h.status = 'captured' AND h.reference LIKE 'job:%'
          AND (j.id IS NULL OR j.tokens_captured IS NULL
               OR j.status NOT IN ('succeeded', 'canceled')
               OR (j.status = 'canceled' AND (j.tokens_captured % j.tokens_per_unit <> 0
                                              OR j.result_location IS NULL)))
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
    return reconcile(session, extra_checks={**JOB_CHECKS, **grants.RECONCILIATION_CHECKS})


# --- recorded runs -----------------------------------------------------------------------------------------


def summary_of(report: ReconciliationReport) -> dict[str, Any]:
    """What a recorded run keeps: the checks, the totals, and each discrepancy with its first ids."""
    return {
        "checks": list(report.checks_run),
        "totals": dict(report.totals),
        "discrepancies": [
            {**asdict(d), "ids": d.ids[:SUMMARY_IDS], "details": d.details[:SUMMARY_IDS]} for d in report.discrepancies
        ],
    }


def record_run(session: Session, *, report: ReconciliationReport, requested_by: str | None) -> ReconciliationRun:
    """Append a run's outcome (committed with the caller's transaction)."""
    run = ReconciliationRun(
        balanced=report.balanced,
        discrepancies=len(report.discrepancies),
        summary=summary_of(report),
        requested_by=requested_by,
    )
    session.add(run)
    session.flush()
    return run


def run_and_record(session: Session, *, engine: Engine, requested_by: str | None) -> ReconciliationRun:
    """Reconcile on a read-only snapshot of its own (every check sees the same instant), then record the run in
    `session`."""
    with snapshot_session(engine) as snapshot:
        report = reconcile_all(snapshot)
    return record_run(session, report=report, requested_by=requested_by)


def reconcile_when_due(
    session: Session, *, engine: Engine, interval_seconds: float, requested_by: str = PERIODIC_REQUESTER
) -> ReconciliationRun | None:
    """The workers' periodic run: reconcile and record when the newest recorded run (anyone's) is at least
    `interval_seconds` old, else nothing. One process at a time: the others find the lock taken and skip, and the
    lock is held until the run is committed, so the next one sees it and waits a whole interval."""
    if not session.execute(_TRY_PERIODIC_LOCK, {"lock": PERIODIC_LOCK}).scalar_one():
        return None
    newest = session.execute(_NEWEST_RUN_AGE).scalar_one_or_none()
    if newest is not None and newest < interval_seconds:
        return None
    return run_and_record(session, engine=engine, requested_by=requested_by)


def latest_run(session: Session) -> ReconciliationRun | None:
    return session.scalars(select(ReconciliationRun).order_by(ReconciliationRun.id.desc()).limit(1)).first()


def list_runs(session: Session, *, before_id: int | None, limit: int) -> list[ReconciliationRun]:
    query = newest_first(select(ReconciliationRun), ReconciliationRun.id, before_id=before_id, limit=limit)
    return list(session.scalars(query))


# --- sealed books ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealOutcome:
    results: list[SealResult]
    caught_up: bool  # False: a stream had more than this request may seal; the periodic sealer does the rest

    def rows(self, stream: str) -> int:
        return sum(r.n_rows for r in self.results if r.stream == stream)


def books_status(session: Session) -> list[StreamDigest]:
    """The newest seal of each stream (sealed_at, seq, last id, rows sealed in all)."""
    return sealing.latest_digests(session)


def seal_now(session: Session, *, max_rows: int, max_batches: int = REQUEST_SEAL_MAX_BATCHES) -> SealOutcome:
    """Seal what is finished and not sealed yet, at most `max_batches` batches per stream. A request never queues
    behind another sealer: when one holds the lock, 409 `sealer_busy`."""
    # The sealers' transaction lock, tried first (seal_all would wait for it); seal_all then takes it again,
    # which a transaction that holds it gets at once.
    if not session.execute(_TRY_SEALER_LOCK, {"key": sealing.SEALER_LOCK}).scalar_one():
        raise SealerBusy("another sealer is at work (a worker's periodic seal); try again in a moment")
    results = sealing.seal_all(session, max_rows=max_rows, max_batches=max_batches)
    full = {stream: sum(1 for r in results if r.stream == stream and r.n_rows == max_rows) for stream in STREAMS}
    return SealOutcome(results=results, caught_up=all(n < max_batches for n in full.values()))
