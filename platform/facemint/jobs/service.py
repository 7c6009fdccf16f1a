"""The life of a metered job, each step one conditional statement in the caller's transaction:

submit   (request)  record the job and reserve its hold together; the queue entry is made after commit
claim    (worker)   queued -> running, attempt + 1; losing the race means someone else has it (or its user is frozen)
progress (worker)   the running attempt's frames done of total (a video), at most once a second; `job.progress`
                    webhooks at 10 % steps when asked for
complete (worker)   running (this attempt) -> succeeded, and capture the hold
fail     (worker)   running (this attempt) -> failed, and release the hold
retry    (worker)   running (this attempt) -> queued, within the attempt budget
cancel   (request)  queued -> canceled + release; running -> cancel requested (the worker stops at the next stage);
                    an admin's cancel is the same, audited
partial  (worker)   a running video whose cancel stopped it -> canceled with what it processed as its result,
                    capturing the seconds processed and releasing the rest
sweep    (any)      stale running jobs back to queued or failed; past-deadline jobs failed (jobs/sweeps.py)

Reads are in jobs/queries.py.

Whoever loses a race changes nothing: every transition names the state (and attempt) it moves from, and the
hold moves in the same transaction, so capture and release each happen at most once. Services never commit."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from billing.pricing import service as pricing
from facemint.audit import service as audit
from facemint.context import RequestContext
from facemint.db import after_commit, before_commit
from facemint.jobs import queries, queue, submit_sql
from facemint.jobs.errors import IdempotencyKeyReused, JobAlreadyFinished, JobNotFinished, TooManyActiveJobs
from facemint.jobs.orm import TERMINAL_STATUSES, JobStatus
from facemint.jobs.queries import JOB_COLUMNS
from facemint.jobs.schemas import JobRead
from facemint.jobs.video_metering import PROGRESS_STEPS, progress_step
from facemint.webhooks import service as webhooks

# A hold outlives its job's deadline by this margin, so the job path (which records why) always settles it
# first; the ledger's own expiry is the backstop for a hold whose job row is somehow never swept.
HOLD_MARGIN_SECONDS = 120


def new_public_id() -> str:
    return "job_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    public_id: str
    tenant_id: int
    user_id: int
    api_key_id: int | None
    account_id: int
    # The price book operations the job is priced by, each per unit: ("swap.image",), ("swap.image",
    # "enhance.image"), ("swap.video", "enhance.video"). The first is the job's `operation`.
    operations: tuple[str, ...]
    queue: str
    units: int  # images: 1; videos: the started seconds of the (trimmed) duration
    idempotency_key: str
    request_hash: bytes
    options: dict[str, Any]
    input_location: str
    webhook_url: str | None
    max_attempts: int
    deadline_seconds: int
    # The tenant's plan's cap on its queued plus running jobs (None: none is checked, for tools and tests that
    # record jobs directly; the submit flow always names it).
    max_active_jobs: int | None = None
    # False: this transaction commits without waiting for its WAL flush (Settings.holds_synchronous_commit).
    synchronous_commit: bool = True


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    job: Row[Any]
    replayed: bool
    available: int | None = None  # the account's available tokens right after the hold (new jobs only)


def submit(session: Session, *, request: SubmitRequest) -> SubmitOutcome:
    """Record the job and hold its price, or replay the job this idempotency key already made.

    The price is each operation's current version, summed: the hold is units x that sum, and the job records
    the lines (`price_lines`), their sum (`tokens_per_unit`) and the first line's version (`price_version`).

    Submits with the same key are serialised by a transaction-scoped advisory lock, so a concurrent duplicate
    waits for the first to commit and then replays it (it never reserves a second hold, and never answers 402
    because the first one's hold used the balance).

    A new job is admitted against the tenant's cap on queued plus running jobs: far below it by the count read
    with the key (before anything is held), near it by `ensure_within_active_cap`, which this registers to run
    right before the commit."""
    submit_sql.KEY_LOCK.execute(session, {"lock": f"job-key:{request.user_id}:{request.idempotency_key}"})
    cap = request.max_active_jobs
    bound = 0 if cap is None else max(cap - ACTIVE_CAP_MARGIN, 0)
    found = submit_sql.KEY_AND_ACTIVE.execute(
        session,
        {
            "user_id": request.user_id,
            "idempotency_key": request.idempotency_key,
            "tenant_id": request.tenant_id,
            "bound": bound,
        },
    ).one()
    if found.existing_id is not None:
        existing = _by_key(session, user_id=request.user_id, idempotency_key=request.idempotency_key)
        assert existing is not None  # the lock keeps a duplicate out, and jobs are never deleted
        # psycopg2 returns bytea as a memoryview of format 'c', which never equals bytes: compare as bytes.
        if bytes(existing.request_hash) != request.request_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was already used for a different request")
        return SubmitOutcome(job=existing, replayed=True)

    if not request.operations or len(set(request.operations)) != len(request.operations):
        raise ValueError(f"a job is priced by one or more distinct operations, not {request.operations!r}")
    # PriceNotFound propagates for an operation missing from the book (the price book is the platform's).
    prices = [pricing.current_price(session, operation=operation) for operation in request.operations]
    lines = [{"operation": p.operation, "version": p.version, "tokens_per_unit": p.tokens_per_unit} for p in prices]
    tokens_per_unit = sum(p.tokens_per_unit for p in prices)
    tokens = tokens_per_unit * request.units
    # InsufficientTokens propagates: the boundary rolls back, and nothing was recorded.
    hold = ledger_holds.reserve(
        session,
        account_id=request.account_id,
        amount=tokens,
        reference=f"job:{request.public_id}",
        ttl_seconds=request.deadline_seconds + HOLD_MARGIN_SECONDS,
        metadata={"job": request.public_id, "operation": request.operations[0], "units": request.units},
        synchronous_commit=request.synchronous_commit,
    )
    job = submit_sql.INSERT_JOB.execute(
        session,
        {
            "public_id": request.public_id,
            "tenant_id": request.tenant_id,
            "user_id": request.user_id,
            "api_key_id": request.api_key_id,
            "account_id": request.account_id,
            "hold_id": hold.hold_id,
            "operation": request.operations[0],
            "queue": request.queue,
            "idempotency_key": request.idempotency_key,
            "request_hash": request.request_hash,
            "price_version": prices[0].version,
            "tokens_per_unit": tokens_per_unit,
            "price_lines": _json(lines),
            "units": request.units,
            "tokens": tokens,
            "options": _json(request.options),
            "input_location": request.input_location,
            "webhook_url": request.webhook_url,
            "max_attempts": request.max_attempts,
            "deadline_seconds": request.deadline_seconds,
        },
    ).one()
    if cap is not None and found.active >= bound:
        tenant_id, limit = request.tenant_id, cap
        before_commit(session, lambda: ensure_within_active_cap(session, tenant_id=tenant_id, cap=limit))
    return SubmitOutcome(job=job, replayed=False, available=hold.available_after)


# Far below the cap a submit is admitted on an unlocked count: what it cannot see are the tenant's other submits
# between their count and their commit, a few milliseconds each, and the tenant's rate limit (at most 500/s on any
# plan) keeps far fewer than this many in that window at once.
ACTIVE_CAP_MARGIN = 32
_ACTIVE_JOBS = text(
    "SELECT count(*) FROM (SELECT FROM jobs WHERE tenant_id = :tenant AND status IN ('queued', 'running') "
    "LIMIT :bound) AS live"
)


def ensure_within_active_cap(session: Session, *, tenant_id: int, cap: int) -> None:
    """Refuse (429) a job just inserted if it takes the tenant past its cap on queued plus running jobs (the
    boundary rolls the job and its hold back). For a submit within `ACTIVE_CAP_MARGIN` of the cap (`submit`
    registers it as a before-commit check, `facemint.db.before_commit`): the tenant's submits are serialised by a
    transaction lock from here to their COMMIT, on one thread, so two concurrent ones cannot both take the last
    place; the count, taken once the lock is held, includes the job itself and every job committed before it.
    Serialising every submit instead would cap one tenant's submit rate at one COMMIT at a time (measured: a third
    fewer submits per second)."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"), {"lock": f"tenant-active-jobs:{tenant_id}"}
    )
    active = session.execute(_ACTIVE_JOBS, {"tenant": tenant_id, "bound": cap + 1}).scalar_one()
    if active > cap:
        raise TooManyActiveJobs(
            f"this tenant already has {active - 1} jobs queued or running, its plan's limit; retry when some finish",
            headers={"Retry-After": "5"},
            limit=cap,
            retry_after=5,
        )


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _by_key(session: Session, *, user_id: int, idempotency_key: str) -> Row[Any] | None:
    return session.execute(
        text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = :user_id AND idempotency_key = :key"),
        {"user_id": user_id, "key": idempotency_key},
    ).one_or_none()


def mark_undispatched(session: Session, *, job_id: int) -> None:
    """The queue refused the entry after commit: let the dispatcher queue it on its next sweep."""
    session.execute(
        text("UPDATE jobs SET dispatched_at = NULL WHERE id = :id AND status = 'queued'"),
        {"id": job_id},
    )


# --- the worker's transitions ---------------------------------------------------------------------------


def claim(session: Session, *, public_id: str, worker_id: str) -> Row[Any] | None:
    """queued -> running for one more attempt; None when the job is not (or no longer) this worker's to run
    (already running elsewhere, finished, canceled, out of attempts or past its deadline). A retry starts from
    the start, so an earlier attempt's progress is cleared."""
    return session.execute(
        text(
            f"""
            UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = clock_timestamp(),
                            heartbeat_at = now(), worker_id = :worker_id,
                            frames_done = NULL, frames_total = NULL, progress_at = NULL
            WHERE public_id = :id AND status = 'queued' AND attempts < max_attempts AND deadline_at > now()
              AND cancel_requested_at IS NULL
              AND NOT EXISTS (SELECT FROM users u WHERE u.id = jobs.user_id AND u.status = 'frozen')
            RETURNING {JOB_COLUMNS}
            """
        ),
        {"id": public_id, "worker_id": worker_id},
    ).one_or_none()


def heartbeat(session: Session, *, job_id: int, attempt: int) -> tuple[bool, bool]:
    """(still ours, cancel requested). Not ours any more: the sweeper took it back, or it was settled."""
    row = session.execute(
        text(
            "UPDATE jobs SET heartbeat_at = now() WHERE id = :id AND status = 'running' AND attempts = :attempt "
            "RETURNING cancel_requested_at IS NOT NULL AS cancel"
        ),
        {"id": job_id, "attempt": attempt},
    ).one_or_none()
    return (row is not None, bool(row.cancel) if row is not None else False)


def complete(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    result_location: str,
    content_type: str,
    size_bytes: int,
    timings_ms: dict[str, float],
    result_ttl_seconds: int,
    frames_done: int | None = None,
    frames_total: int | None = None,
    synchronous_commit: bool = True,
) -> Row[Any] | None:
    """running (this attempt) -> succeeded, capturing the hold in the same transaction (a video's final progress
    with it). None: the job is no longer this attempt's (swept, canceled or settled by a duplicate run) and
    nothing was charged."""
    row = session.execute(
        text(
            f"""
            UPDATE jobs SET status = 'succeeded', tokens_captured = tokens_held, finished_at = now(),
                            result_location = :location, result_content_type = :content_type,
                            result_size_bytes = :size, timings_ms = CAST(:timings AS jsonb),
                            result_expires_at = now() + make_interval(secs => :ttl),
                            error_code = NULL, error_detail = NULL, {_FINAL_PROGRESS}
            WHERE id = :id AND status = 'running' AND attempts = :attempt AND cancel_requested_at IS NULL
            RETURNING {JOB_COLUMNS}
            """
        ),
        {
            "id": job_id,
            "attempt": attempt,
            "location": result_location,
            "content_type": content_type,
            "size": size_bytes,
            "timings": _json(timings_ms),
            "ttl": result_ttl_seconds,
            "done": frames_done,
            "total": frames_total,
        },
    ).one_or_none()
    if row is None:
        return None
    ledger_holds.capture(
        session, hold_id=row.hold_id, amount=row.tokens_captured, synchronous_commit=synchronous_commit
    )
    _record_webhook(session, row)
    return row


def fail(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    code: str,
    detail: str,
    status: JobStatus = JobStatus.failed,
    timings_ms: dict[str, float] | None = None,
) -> Row[Any] | None:
    """running (this attempt) -> failed (or canceled), releasing the hold. None: no longer this attempt's."""
    rows = finish_uncharged(
        session,
        job_ids=[job_id],
        status=status,
        code=code,
        detail=detail,
        from_statuses=("running",),
        attempt=attempt,
        timings_ms=timings_ms,
    )
    return rows[0] if rows else None


def retry(session: Session, *, job_id: int, attempt: int, code: str, detail: str) -> Row[Any] | None:
    """running (this attempt) -> queued again when attempts and time are left, else failed and released."""
    row = session.execute(
        text(
            f"""
            UPDATE jobs SET status = 'queued', dispatched_at = NULL, worker_id = NULL, heartbeat_at = NULL,
                            error_code = :code, error_detail = :detail
            WHERE id = :id AND status = 'running' AND attempts = :attempt AND attempts < max_attempts
              AND deadline_at > now() AND cancel_requested_at IS NULL
            RETURNING {JOB_COLUMNS}
            """
        ),
        {"id": job_id, "attempt": attempt, "code": code, "detail": detail[:1000]},
    ).one_or_none()
    if row is not None:
        return row
    return fail(session, job_id=job_id, attempt=attempt, code=code, detail=detail)


# A settlement writes the final progress (frames_done, frames_total: NULL for an image), whatever the throttle
# left unwritten.
_FINAL_PROGRESS = """
    frames_done = coalesce(CAST(:done AS integer), frames_done),
    frames_total = coalesce(CAST(:total AS integer), frames_total),
    progress_at = CASE WHEN CAST(:done AS integer) IS NULL THEN progress_at ELSE now() END
"""


def cancel_with_partial_result(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    seconds: int,
    frames_done: int,
    frames_total: int,
    result_location: str,
    content_type: str,
    size_bytes: int,
    timings_ms: dict[str, float],
    result_ttl_seconds: int,
    synchronous_commit: bool = True,
) -> Row[Any] | None:
    """A video's running attempt stopped by its cancel -> canceled, keeping what the attempt processed as the
    job's result and capturing `seconds` (at least 1, at most its units) of the hold's per-second price; the rest
    is released by the same capture. One `job.canceled` webhook. None: not this attempt's, not asked to cancel or
    not a video (an image canceled while running is never charged), and nothing was charged."""
    if seconds < 1:
        raise ValueError("a cancel that processed nothing is released in full (`fail`), not captured")
    row = session.execute(
        text(
            f"""
            UPDATE jobs SET status = 'canceled', tokens_captured = least(units, :seconds) * tokens_per_unit,
                            finished_at = now(), result_location = :location, result_content_type = :content_type,
                            result_size_bytes = :size, timings_ms = CAST(:timings AS jsonb),
                            result_expires_at = now() + make_interval(secs => :ttl),
                            error_code = 'canceled',
                            error_detail = 'canceled by the caller; charged for the ' || least(units, :seconds)
                                           || ' of ' || units || ' seconds processed',
                            {_FINAL_PROGRESS}
            WHERE id = :id AND status = 'running' AND attempts = :attempt AND cancel_requested_at IS NOT NULL
              AND options ->> 'media' = 'video'
            RETURNING {JOB_COLUMNS}
            """
        ),
        {
            "id": job_id,
            "attempt": attempt,
            "seconds": seconds,
            "location": result_location,
            "content_type": content_type,
            "size": size_bytes,
            "timings": _json(timings_ms),
            "ttl": result_ttl_seconds,
            "done": frames_done,
            "total": frames_total,
        },
    ).one_or_none()
    if row is None:
        return None
    ledger_holds.capture(
        session, hold_id=row.hold_id, amount=row.tokens_captured, synchronous_commit=synchronous_commit
    )
    _record_webhook(session, row)
    return row


_LAST_PROGRESS_STEP = text(
    f"""
    SELECT coalesce(max(least({PROGRESS_STEPS - 1},
                    CAST(payload #>> '{{data,progress,frames_done}}' AS bigint) * {PROGRESS_STEPS}
                    / nullif(CAST(payload #>> '{{data,progress,frames_total}}' AS bigint), 0))), 0)
    FROM webhook_events WHERE job_id = :id AND event_type = 'job.progress'
    """
)


def record_progress(
    session: Session, *, job_id: int, attempt: int, frames_done: int, frames_total: int
) -> Row[Any] | None:
    """The running attempt's progress, and its `job.progress` webhook when the job asked for them
    (`options.progress_webhooks`) and this write reaches a new 10 % step. None: the attempt is not running any
    more (settled, swept), and nothing was written, so no progress event ever follows the terminal one."""
    row = session.execute(
        text(
            f"""
            UPDATE jobs SET frames_done = :done, frames_total = :total, progress_at = now()
            WHERE id = :id AND status = 'running' AND attempts = :attempt
            RETURNING {JOB_COLUMNS}
            """
        ),
        {"id": job_id, "attempt": attempt, "done": frames_done, "total": frames_total},
    ).one_or_none()
    if row is None or not row.webhook_url or not (row.options or {}).get("progress_webhooks"):
        return row
    step = progress_step(frames_done, frames_total)
    # The job's row stays locked until this commits, so two writes never both take the same step. Events this
    # transaction recorded count too (the outbox adds them through the ORM: flushed first).
    session.flush()
    if step > 0 and step > session.execute(_LAST_PROGRESS_STEP, {"id": row.id}).scalar_one():
        _record_webhook(session, row, progress=True)
    return row


def mark_inputs_deleted(session: Session, *, job_ids: Sequence[int]) -> None:
    session.execute(
        text("UPDATE jobs SET inputs_deleted_at = now() WHERE id = ANY(:ids) AND inputs_deleted_at IS NULL"),
        {"ids": list(job_ids)},
    )


# --- the user's transitions ---------------------------------------------------------------------------


def cancel(session: Session, *, job: Row[Any]) -> Row[Any]:
    """Queued: canceled now and released (never charged). Running: cancel requested; the worker stops at its
    next stage boundary and releases (never charged), unless the job finishes first, in which case it is
    charged as any success. Finished: 409."""
    rows = finish_uncharged(
        session,
        job_ids=[job.id],
        status=JobStatus.canceled,
        code="canceled",
        detail="canceled by the caller",
        from_statuses=("queued",),
    )
    if rows:
        return rows[0]
    row = session.execute(
        text(
            f"UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()) "
            f"WHERE id = :id AND status = 'running' RETURNING {JOB_COLUMNS}"
        ),
        {"id": job.id},
    ).one_or_none()
    if row is not None:
        return row
    current = queries.get_by_id(session, job_id=job.id)
    assert current is not None
    if current.status == "queued":  # it moved running -> queued between the two statements: try once more
        return cancel(session, job=current)
    raise JobAlreadyFinished(f"the job already {current.status}", status=current.status)


def cancel_for_admin(session: Session, *, context: RequestContext, redis: Redis, job: Row[Any]) -> Row[Any]:
    """Staff or the tenant's admin cancel someone's job: exactly the owner's cancel (the same release), audited
    because it acts on another user's job. A job canceled now wakes its `Prefer: wait` callers once committed."""
    canceled = cancel(session, job=job)
    audit.record(
        session,
        context=context,
        action="job.cancel",
        target_type="job",
        target_id=job.public_id,
        tenant_id=job.tenant_id,
        before={"status": job.status},
        after={"status": canceled.status, "cancel_requested": canceled.cancel_requested_at is not None},
    )
    if canceled.status == JobStatus.canceled:
        after_commit(session, lambda: _notify_finished(redis, canceled.public_id, canceled.status))
    return canceled


def _notify_finished(redis: Redis, public_id: str, status: str) -> None:
    with contextlib.suppress(RedisError):
        queue.notify_finished(redis, public_id=public_id, status=status)


def ensure_finished(job: Row[Any]) -> None:
    if job.status not in TERMINAL_STATUSES:
        raise JobNotFinished("the job is still queued or running: cancel it first")


def mark_files_deleted(session: Session, *, job_id: int) -> Row[Any]:
    """The caller deleted the job's files: its result is gone for the API now. The storage is purged after
    commit, and by the sweeper until it confirms (`result_purged_at`, `inputs_deleted_at`)."""
    return session.execute(
        text(
            f"UPDATE jobs SET files_deleted_at = coalesce(files_deleted_at, now()) WHERE id = :id "
            f"RETURNING {JOB_COLUMNS}"
        ),
        {"id": job_id},
    ).one()


# --- shared ------------------------------------------------------------------------------------------


def finish_uncharged(
    session: Session,
    *,
    job_ids: Sequence[int],
    status: JobStatus,
    code: str,
    detail: str,
    from_statuses: tuple[str, ...],
    attempt: int | None = None,
    timings_ms: dict[str, float] | None = None,
) -> list[Row[Any]]:
    """Move jobs to a terminal state without charging, releasing their holds in the same transaction."""
    if not job_ids:
        return []
    rows = list(
        session.execute(
            text(
                f"""
                UPDATE jobs SET status = :status, finished_at = now(), error_code = :code, error_detail = :detail,
                                timings_ms = coalesce(CAST(:timings AS jsonb), timings_ms)
                WHERE id = ANY(:ids) AND status = ANY(:from_statuses)
                  AND (CAST(:attempt AS integer) IS NULL OR attempts = :attempt)
                RETURNING {JOB_COLUMNS}
                """
            ),
            {
                "ids": list(job_ids),
                "status": status.value,
                "code": code,
                "detail": detail[:1000],
                "from_statuses": list(from_statuses),
                "attempt": attempt,
                "timings": _json(timings_ms) if timings_ms is not None else None,
            },
        )
    )
    # A hold the ledger already expired (its job was stuck past the margin) stays expired: nothing to release.
    ledger_holds.release_holds(session, hold_ids=[r.hold_id for r in rows])
    for row in rows:
        _record_webhook(session, row)
    return rows


def _record_webhook(session: Session, row: Row[Any], *, progress: bool = False) -> None:
    """The job's event in the outbox: its terminal one (`job.<status>`, at `finished_at`), or with `progress` a
    `job.progress` (at the progress' `updated_at`)."""
    if not row.webhook_url:
        return
    data = JobRead.from_row(row).model_dump(mode="json")
    event_type = "job.progress" if progress else f"job.{row.status}"
    webhooks.record_event(
        session,
        job_id=row.id,
        tenant_id=row.tenant_id,
        url=row.webhook_url,
        event_type=event_type,
        payload={
            "type": event_type,
            "timestamp": data["progress"]["updated_at"] if progress else data["finished_at"],
            "data": data,
        },
    )
