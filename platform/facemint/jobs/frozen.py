"""Jobs of a frozen user: released (canceled, never charged, never run), whether the freeze came from an abuse
rule (`facemint.abuse.freezing`) or a person. `facemint.jobs.service.claim` never claims such a job either."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from facemint.jobs import service as jobs
from facemint.jobs.orm import JobStatus

# The error code of a job released because its user is frozen (an abuse rule, or a person): never run, never
# charged.
FROZEN_CODE = "account_frozen"
_FROZEN_DETAIL = "released without running: the account is frozen"


def release_queued_of_user(session: Session, *, user_id: int, detail: str = _FROZEN_DETAIL) -> list[Row[Any]]:
    """Every queued job of a user that was just frozen -> canceled, its hold released (`account_frozen`). A job
    that commits after this (a submit authenticated before the freeze) is refused by `claim` and released by
    `release_if_owner_frozen` when a worker picks it up."""
    ids = session.execute(
        text("SELECT id FROM jobs WHERE user_id = :user AND status = 'queued'"), {"user": user_id}
    ).scalars()
    return jobs.finish_uncharged(
        session,
        job_ids=list(ids),
        status=JobStatus.canceled,
        code=FROZEN_CODE,
        detail=detail,
        from_statuses=("queued",),
    )


def release_if_owner_frozen(session: Session, *, public_id: str) -> Row[Any] | None:
    """A queued job `claim` refused because its user is frozen -> canceled and released, never run. None when that
    is not why (running elsewhere, finished, or its user active)."""
    job_id = session.execute(
        text(
            "SELECT j.id FROM jobs j JOIN users u ON u.id = j.user_id "
            "WHERE j.public_id = :id AND j.status = 'queued' AND u.status = 'frozen'"
        ),
        {"id": public_id},
    ).scalar_one_or_none()
    if job_id is None:
        return None
    rows = jobs.finish_uncharged(
        session,
        job_ids=[job_id],
        status=JobStatus.canceled,
        code=FROZEN_CODE,
        detail=_FROZEN_DETAIL,
        from_statuses=("queued",),
    )
    return rows[0] if rows else None
