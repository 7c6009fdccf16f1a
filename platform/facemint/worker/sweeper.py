"""Housekeeping that makes crashes harmless, run by every worker (safe in many processes at once: each step
locks the rows it takes with SKIP LOCKED and moves them with guarded statements).

1. dispatch: queued jobs without a live queue entry are queued (recorded but never queued; Redis lost it);
2. take back: running jobs whose worker stopped heartbeating go back to the queue, or fail and release;
3. deadline: queued or running jobs past their deadline fail and release;
4. holds: holds past their own expiry are released by the ledger (the backstop);
5. lots: credit lots past their expiry lose what no hold holds, through one `expiry` transaction per account
   (billing.ledger.lots; a hold released above leaves its tokens to this step, one captured burns them);
6. low-balance alerts: every alert whose account crossed its line fires (its `balance.low` event queued) or
   re-arms (facemint.balance_alerts.evaluation): the drops holds made at submit and the rises releases made,
   which no evaluation saw in their own transaction, and the drops expiry made;
7. files: inputs and stray attempt results of finished jobs, and results deleted or past their expiry, are
   purged (marked only once the storage confirmed); every `orphan_sweep_interval_seconds`, files no job accounts
   for any more are removed, and staged files and unfinished uploads a crash left (see facemint.jobs.files).

The bound: a hold is released at most `job_deadline_seconds + sweep_interval_seconds` after submit while any
worker runs (the hold's own expiry, `HOLD_MARGIN_SECONDS` later, is the backstop)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus

from billing.ledger import holds as ledger_holds
from billing.ledger import lots as ledger_lots
from facemint import tracing
from facemint.approvals import service as approvals
from facemint.balance_alerts import evaluation as balance_alerts
from facemint.db import unit_of_work
from facemint.jobs import files, queue, sweeps
from facemint.worker.tasks import WorkerContext

logger = logging.getLogger("facemint.sweeper")
BATCH = 200
MAX_BATCHES = 50  # at most 10,000 jobs per step and sweep; the rest waits one interval


@dataclass
class SweepReport:
    dispatched: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    holds_expired: list[int] = field(default_factory=list)
    alerts_fired: int = 0
    alerts_rearmed: int = 0
    tokens_expired: int = 0  # what expired lots lost, in `expiry` transactions
    files_deleted: int = 0
    orphans_deleted: int = 0
    approvals_expired: int = 0


def sweep_once(context: WorkerContext) -> SweepReport:
    report = SweepReport()
    settings = context.settings
    # Batch after batch until a short one: a backlog larger than one batch is still settled within this sweep,
    # which is what the documented bound on held tokens assumes.
    for _ in range(MAX_BATCHES):
        with unit_of_work(context.sessions) as session:
            requeued, failed = sweeps.take_back_stale(
                session, stale_after_seconds=settings.job_stale_after_seconds, limit=BATCH
            )
        report.requeued += requeued
        report.failed += failed
        if len(requeued) + len(failed) < BATCH:
            break
    for _ in range(MAX_BATCHES):
        with unit_of_work(context.sessions) as session:
            failed = sweeps.fail_past_deadline(session, limit=BATCH)
        report.failed += failed
        if len(failed) < BATCH:
            break
    for _ in range(MAX_BATCHES):
        with unit_of_work(context.sessions) as session:
            expired = ledger_holds.expire_due_holds(session, limit=BATCH)
        report.holds_expired += expired
        if len(expired) < BATCH:
            break
    for _ in range(MAX_BATCHES):
        with unit_of_work(context.sessions) as session:
            expiries = ledger_lots.expire_due_lots(session, limit=BATCH)
        report.tokens_expired += sum(e.amount for e in expiries)
        if not expiries:
            break
    for _ in range(MAX_BATCHES):
        with unit_of_work(context.sessions) as session:
            alerts = balance_alerts.sweep(session, limit=BATCH)
        report.alerts_fired += alerts.fired
        report.alerts_rearmed += alerts.rearmed
        if alerts.moved < BATCH:
            break
    with unit_of_work(context.sessions) as session:
        report.approvals_expired = approvals.expire_due(session)
    _notify(context, report.failed)
    report.dispatched = dispatch(context)
    report.files_deleted = delete_files(context)
    report.orphans_deleted = delete_orphans_when_due(context)
    return report


def dispatch(context: WorkerContext) -> list[str]:
    """Queue what Postgres says is queued but the queue may not have. Rows stay locked until each is queued, so
    two sweepers never queue the same job at once; a Redis failure leaves the rest for the next sweep."""
    dispatched: list[str] = []
    with unit_of_work(context.sessions) as session:
        due = sweeps.due_for_dispatch(session, redispatch_after_seconds=context.settings.job_redispatch_seconds)
        done: list[int] = []
        for row in due:
            try:
                _drop_stale_entry(context, row.public_id)
                # A new trace: the entry that carried the request's is gone (a retry, a lost entry).
                with tracing.publish_span(row.queue, row.public_id, redispatch=True):
                    queue.enqueue(
                        context.redis,
                        queue_name=row.queue,
                        public_id=row.public_id,
                        timeout_seconds=queue.run_timeout(row.seconds_left),
                        meta=tracing.queue_meta(),
                    )
            except RedisError:
                logger.warning("queue unavailable: %d jobs wait for the next sweep", len(due) - len(done))
                break
            done.append(row.id)
            dispatched.append(row.public_id)
        sweeps.mark_dispatched(session, job_ids=done)
    return dispatched


def _drop_stale_entry(context: WorkerContext, public_id: str) -> None:
    """Postgres says the job is queued, so no attempt is running it: a queue entry still marked `started` was
    left by a worker that died mid-job (SIGKILL leaves RQ's entry `started` for ever), and `queue.enqueue` would
    keep it as live and queue nothing. Delete it so the job is queued again."""
    try:
        existing = RQJob.fetch(public_id, connection=context.redis)
    except NoSuchJobError:
        return
    if existing.get_status(refresh=False) == RQStatus.STARTED:
        logger.info("dropping the stale started queue entry of %s", public_id)
        existing.delete()


def delete_files(context: WorkerContext) -> int:
    """Purge finished jobs' inputs and stray results, then deleted or expired results; returns how many jobs'
    files were purged. A job whose storage refuses a delete stays marked as holding files: the next sweep retries
    it, and the others go ahead."""
    purged = 0
    for rows_of, purge, mark in (
        (
            sweeps.finished_with_files,
            lambda row: files.purge_finished(context.storage, row, keep=row.result_location),
            sweeps.mark_inputs_purged,
        ),
        (sweeps.results_to_purge, lambda row: files.purge_files(context.storage, row), sweeps.mark_results_purged),
    ):
        with unit_of_work(context.sessions) as session:
            done = []
            for row in rows_of(session):
                try:
                    purge(row)
                except OSError:
                    logger.warning(
                        "could not delete the files of %s; retrying next sweep", row.public_id, exc_info=True
                    )
                    continue
                done.append(row.id)
            mark(session, job_ids=done)
        purged += len(done)
    return purged


def delete_orphans_when_due(context: WorkerContext) -> int:
    """`delete_orphans` at most every `orphan_sweep_interval_seconds` per worker (a listing of the storage is
    worth an interval of its own, longer than the sweep's)."""
    now = time.monotonic()
    if now - context.orphans_swept_at < context.settings.orphan_sweep_interval_seconds:
        return 0
    context.orphans_swept_at = now
    try:
        files.clear_stale_staging(context.storage, context.settings)
    except Exception:  # S3's errors are not OSErrors; either way the orphans still go, and the next round retries
        logger.warning("could not clear stale staging files; retrying next round", exc_info=True)
    return delete_orphans(context)


def delete_orphans(context: WorkerContext, *, batch: int = 500) -> int:
    """Delete stored inputs and results that no job accounts for and that are older than the grace period."""
    cutoff = time.time() - context.settings.orphan_file_grace_seconds
    deleted = 0
    pending: list[files.OrphanCandidate] = []

    def settle(candidates: list[files.OrphanCandidate]) -> int:
        with unit_of_work(context.sessions) as session:
            jobs_now = sweeps.jobs_by_public_id(session, public_ids=sorted({c.public_id for c in candidates}))
        count = 0
        for candidate in candidates:
            if files.still_needed(candidate, jobs_now.get(candidate.public_id)):
                continue
            try:
                context.storage.delete(candidate.key)
            except OSError:
                logger.warning("could not delete orphan %s", candidate.key, exc_info=True)
                continue
            count += 1
        return count

    for folder in ("inputs", "results"):
        for stored in context.storage.list(folder):
            if stored.modified_at > cutoff:
                continue
            candidate = files.parse_key(stored.key)
            if candidate is None:
                continue
            pending.append(candidate)
            if len(pending) >= batch:
                deleted += settle(pending)
                pending = []
    if pending:
        deleted += settle(pending)
    if deleted:
        logger.info("deleted %d stored files no job accounts for", deleted)
    return deleted


def _notify(context: WorkerContext, public_ids: list[str]) -> None:
    for public_id in public_ids:
        try:
            queue.notify_finished(context.redis, public_id=public_id, status="finished")
        except RedisError:
            return


class Periodic(threading.Thread):
    """Runs `step` every `interval` seconds until stopped; an error is logged and the next round tries again."""

    def __init__(self, name: str, interval: float, step: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.step = step
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.step()
            except Exception:
                logger.warning("%s failed; retrying in %.1fs", self.name, self.interval, exc_info=True)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
