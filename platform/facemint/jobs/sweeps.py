"""The sweeper's transitions over many jobs at once. Each locks what it takes with SKIP LOCKED, so sweepers run
in every worker; whoever loses a race changes nothing (see jobs/service.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from facemint.jobs.orm import JobStatus
from facemint.jobs.service import finish_uncharged


def take_back_stale(session: Session, *, stale_after_seconds: float, limit: int = 100) -> tuple[list[str], list[str]]:
    """Running jobs whose worker stopped heartbeating: queued again within their attempt budget and deadline
    (returns their ids to dispatch), otherwise failed and released. SKIP LOCKED: sweepers run everywhere."""
    stale = session.execute(
        text(
            """
            SELECT id, attempts < max_attempts AND deadline_at > now() AND cancel_requested_at IS NULL AS retry,
                   cancel_requested_at IS NOT NULL AS canceled
            FROM jobs
            WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => :stale)
            ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
            """
        ),
        {"stale": stale_after_seconds, "limit": limit},
    ).all()
    requeued = [
        r.public_id
        for r in session.execute(
            text(
                "UPDATE jobs SET status = 'queued', dispatched_at = NULL, worker_id = NULL, heartbeat_at = NULL, "
                "error_code = 'worker_lost', error_detail = 'the worker stopped while running this job; retried' "
                "WHERE id = ANY(:ids) AND status = 'running' RETURNING public_id"
            ),
            {"ids": [r.id for r in stale if r.retry]},
        )
    ]
    failed = finish_uncharged(
        session,
        job_ids=[r.id for r in stale if not r.retry and not r.canceled],
        status=JobStatus.failed,
        code="worker_lost",
        detail="the worker stopped while running this job and no attempts or time were left",
        from_statuses=("running",),
    )
    canceled = finish_uncharged(
        session,
        job_ids=[r.id for r in stale if r.canceled],
        status=JobStatus.canceled,
        code="canceled",
        detail="canceled by the caller",
        from_statuses=("running",),
    )
    return requeued, [r.public_id for r in failed + canceled]


def fail_past_deadline(session: Session, *, limit: int = 100) -> list[str]:
    ids = list(
        session.execute(
            text(
                "SELECT id FROM jobs WHERE status IN ('queued', 'running') AND deadline_at <= now() "
                "ORDER BY deadline_at LIMIT :limit FOR UPDATE SKIP LOCKED"
            ),
            {"limit": limit},
        ).scalars()
    )
    rows = finish_uncharged(
        session,
        job_ids=ids,
        status=JobStatus.failed,
        code="deadline_exceeded",
        detail="the job did not finish before its deadline; its tokens were released",
        from_statuses=("queued", "running"),
    )
    return [r.public_id for r in rows]


def due_for_dispatch(session: Session, *, redispatch_after_seconds: float, limit: int = 200) -> list[Row[Any]]:
    """Queued jobs with no queue entry (recorded but never queued, or taken back by the sweeper), and queued jobs
    whose queue entry is older than `redispatch_after_seconds` (the entry may be lost: Redis restarted empty),
    each with the seconds left to its deadline. Locked until the caller commits; the caller queues them and marks
    them dispatched."""
    return list(
        session.execute(
            text(
                """
                SELECT id, public_id, queue, extract(epoch FROM deadline_at - now()) AS seconds_left FROM jobs
                WHERE status = 'queued' AND deadline_at > now()
                  AND (dispatched_at IS NULL AND created_at < now() - interval '1 second'
                       OR dispatched_at < now() - make_interval(secs => :after))
                ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
                """
            ),
            {"after": redispatch_after_seconds, "limit": limit},
        )
    )


def mark_dispatched(session: Session, *, job_ids: Sequence[int]) -> None:
    session.execute(
        text("UPDATE jobs SET dispatched_at = clock_timestamp() WHERE id = ANY(:ids) AND status = 'queued'"),
        {"ids": list(job_ids)},
    )


def finished_with_files(session: Session, *, limit: int = 200) -> list[Row[Any]]:
    """Finished jobs whose inputs (and any stray attempt's result) are still stored. Locked until the caller
    commits, so two sweepers never purge the same job at once."""
    return list(
        session.execute(
            text(
                """
                SELECT id, public_id, status, attempts, options, input_location, result_location
                FROM jobs
                WHERE status IN ('succeeded', 'failed', 'canceled') AND inputs_deleted_at IS NULL
                ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
                """
            ),
            {"limit": limit},
        )
    )


def mark_inputs_purged(session: Session, *, job_ids: Sequence[int]) -> None:
    """Inputs and stray results are gone; a job that never had a result has nothing left at all. A settled result
    (a success's, or a canceled video's partial one) stays until it is deleted or expires."""
    session.execute(
        text(
            "UPDATE jobs SET inputs_deleted_at = coalesce(inputs_deleted_at, now()), "
            "result_purged_at = CASE WHEN result_location IS NOT NULL THEN result_purged_at "
            "ELSE coalesce(result_purged_at, now()) END "
            "WHERE id = ANY(:ids)"
        ),
        {"ids": list(job_ids)},
    )


def results_to_purge(session: Session, *, limit: int = 200) -> list[Row[Any]]:
    """Jobs whose result was deleted by the caller or has expired, and is not purged yet."""
    return list(
        session.execute(
            text(
                """
                SELECT id, public_id, status, attempts, options, input_location, result_location
                FROM jobs
                WHERE result_purged_at IS NULL AND result_location IS NOT NULL
                  AND (files_deleted_at IS NOT NULL OR result_expires_at <= now())
                ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
                """
            ),
            {"limit": limit},
        )
    )


def mark_results_purged(session: Session, *, job_ids: Sequence[int]) -> None:
    session.execute(
        text(
            "UPDATE jobs SET files_deleted_at = coalesce(files_deleted_at, now()), result_purged_at = now(), "
            "inputs_deleted_at = coalesce(inputs_deleted_at, now()) WHERE id = ANY(:ids)"
        ),
        {"ids": list(job_ids)},
    )


def jobs_by_public_id(session: Session, *, public_ids: Sequence[str]) -> dict[str, Row[Any]]:
    rows = session.execute(
        text(
            "SELECT public_id, status, attempts, result_location, files_deleted_at, inputs_deleted_at "
            "FROM jobs WHERE public_id = ANY(:ids)"
        ),
        {"ids": list(public_ids)},
    )
    return {row.public_id: row for row in rows}
