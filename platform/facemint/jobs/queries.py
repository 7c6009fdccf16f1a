"""Reading jobs: one job as its caller may see it, a user's list, usage, and the admin list and detail. Nothing
here writes."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import select, text
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from billing.ledger.orm import Hold
from facemint import tenancy
from facemint.jobs.errors import JobNotFound
from facemint.jobs.orm import Job
from facemint.jobs.schemas import AdminJobDetail
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant
from facemint.users.orm import User
from facemint.webhooks import service as webhooks

JOB_COLUMNS = """
    id, public_id, tenant_id, user_id, api_key_id, account_id, hold_id, operation, queue, status, idempotency_key,
    request_hash, price_version, tokens_per_unit, units, tokens_held, tokens_captured, options, input_location,
    result_location, result_content_type, result_size_bytes, webhook_url, error_code, error_detail, attempts,
    max_attempts, worker_id, timings_ms, created_at, dispatched_at, started_at, heartbeat_at, finished_at,
    cancel_requested_at, deadline_at, inputs_deleted_at, result_expires_at, files_deleted_at, price_lines,
    frames_done, frames_total, progress_at
"""


def get_visible(
    session: Session, *, public_id: str, user_id: int, tenant_scope: int | None, own_only: bool
) -> Row[Any]:
    """A job the caller may see: their own, or (tenant admins and staff reading through /v1) within their scope.
    Anything else answers 404, as if it did not exist."""
    row = session.execute(
        text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE public_id = :id"), {"id": public_id}
    ).one_or_none()
    if row is None:
        raise JobNotFound("job not found")
    if own_only and row.user_id != user_id:
        raise JobNotFound("job not found")
    tenancy.ensure_visible(tenant_scope, row.tenant_id, not_found=JobNotFound("job not found"))
    return row


def get_by_id(session: Session, *, job_id: int) -> Row[Any] | None:
    return session.execute(text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id"), {"id": job_id}).one_or_none()


def get_running_under(session: Session, *, public_id: str, worker_id: str) -> Row[Any] | None:
    """The job if it is running under this worker id (a claim of that worker's that landed)."""
    return session.execute(
        text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE public_id = :id AND status = 'running' AND worker_id = :worker"),
        {"id": public_id, "worker": worker_id},
    ).one_or_none()


def list_jobs(
    session: Session,
    *,
    user_id: int,
    status: str | None,
    operation: str | None,
    created_after: Any,
    created_before: Any,
    before_id: int | None,
    limit: int,
) -> list[Row[Any]]:
    return list(
        session.execute(
            text(
                f"""
                SELECT {JOB_COLUMNS} FROM jobs
                WHERE user_id = :user_id
                  AND (CAST(:status AS text) IS NULL OR status = :status)
                  AND (CAST(:operation AS text) IS NULL OR operation = :operation)
                  AND (CAST(:after AS timestamptz) IS NULL OR created_at >= :after)
                  AND (CAST(:before AS timestamptz) IS NULL OR created_at < :before)
                  AND (CAST(:before_id AS bigint) IS NULL OR id < :before_id)
                ORDER BY id DESC LIMIT :limit
                """
            ),
            {
                "user_id": user_id,
                "status": status,
                "operation": operation,
                "after": created_after,
                "before": created_before,
                "before_id": before_id,
                "limit": limit + 1,
            },
        )
    )


def usage(session: Session, *, user_id: int, start: date, end: date) -> list[Row[Any]]:
    """The caller's charges by day (UTC) and operation: what was captured (successes, and videos canceled mid-run
    for the seconds they processed), nothing merely held."""
    return list(
        session.execute(
            text(
                """
                SELECT (finished_at AT TIME ZONE 'UTC')::date AS day, operation,
                       count(*) AS jobs, CAST(sum(tokens_captured) AS bigint) AS tokens
                FROM jobs
                WHERE user_id = :user_id AND status IN ('succeeded', 'canceled') AND tokens_captured IS NOT NULL
                  AND finished_at >= CAST(:start AS date)::timestamp AT TIME ZONE 'UTC'
                  AND finished_at < (CAST(:end AS date) + 1)::timestamp AT TIME ZONE 'UTC'
                GROUP BY 1, 2 ORDER BY 1, 2
                """
            ),
            {"user_id": user_id, "start": start, "end": end},
        )
    )


# --- staff and tenant admins (/admin/v1/jobs): every job within the caller's tenant scope -----------------------

_JOBS = Job.__table__
_STAFF_COLUMNS = (*_JOBS.c, User.email.label("user_email"))
_HOLD_COLUMNS = (
    Hold.status.label("hold_status"),
    Hold.amount.label("hold_amount"),
    Hold.captured_amount.label("hold_captured_amount"),
    Hold.created_at.label("hold_created_at"),
    Hold.expires_at.label("hold_expires_at"),
    Hold.resolved_at.label("hold_resolved_at"),
)


def list_for_admin(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    user_id: int | None,
    status: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[Row[Any]]:
    """Jobs newest first, with their owner's email. Each filter has an index ending in `id` to walk backwards
    (see the 0007 migration), so a page reads about `limit` rows whatever the table's size."""
    query = select(*_STAFF_COLUMNS).join(User, User.id == _JOBS.c.user_id)
    query = within_tenant(query, _JOBS.c.tenant_id, tenant_scope=tenant_scope, tenant_id=tenant_id)
    if user_id is not None:
        query = query.where(_JOBS.c.user_id == user_id)
    if status is not None:
        query = query.where(_JOBS.c.status == status)
    if created_after is not None:
        query = query.where(_JOBS.c.created_at >= created_after)
    if created_before is not None:
        query = query.where(_JOBS.c.created_at < created_before)
    return list(session.execute(newest_first(query, _JOBS.c.id, before_id=before_id, limit=limit)))


def get_for_admin(session: Session, *, public_id: str, tenant_scope: int | None) -> Row[Any]:
    """One job with its owner's email and its hold (`hold_*`: what is held, captured or released); another
    tenant's job answers 404, as a missing one does."""
    row = session.execute(
        select(*_STAFF_COLUMNS, *_HOLD_COLUMNS)
        .join(User, User.id == _JOBS.c.user_id)
        .join(Hold, Hold.id == _JOBS.c.hold_id)
        .where(_JOBS.c.public_id == public_id)
    ).one_or_none()
    if row is None:
        raise JobNotFound("job not found")
    tenancy.ensure_visible(tenant_scope, row.tenant_id, not_found=JobNotFound("job not found"))
    return cast("Row[Any]", row)


def admin_detail(session: Session, *, public_id: str, tenant_scope: int | None) -> AdminJobDetail:
    """What /admin/v1/jobs/{id} and the console's job page show: the job, its hold and its webhook attempts."""
    row = get_for_admin(session, public_id=public_id, tenant_scope=tenant_scope)
    return AdminJobDetail.from_detail(row, webhooks.list_deliveries(session, job_id=row.id))
