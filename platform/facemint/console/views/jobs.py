"""The jobs screens: the list with its filters (status, tenant, user, created between two times in the viewer's
zone), a job's page (tokens held and captured, timings, webhook attempts, a thumbnail of the result), and cancel.
Each calls what /admin/v1/jobs calls, with the same scopes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from facemint.auth.scopes import Scope
from facemint.console.web import CheckedForm, ViewerDep, parse_local, redirect, render
from facemint.deps import SessionDep
from facemint.errors import Unprocessable
from facemint.jobs import queries as job_queries
from facemint.jobs import service as jobs
from facemint.jobs.endpoints import StorageDep
from facemint.jobs.orm import JobStatus
from facemint.jobs.schemas import AdminJobRead
from facemint.jobs.thumbnails import result_thumbnail
from facemint.pagination import decode_cursor, make_page
from facemint.users import service as user_service

router = APIRouter()

PAGE_SIZE = 50
CANCELABLE = (JobStatus.queued, JobStatus.running)


def _user_filter(session: SessionDep, user: str) -> int | None:
    """A user id, or the id of the user with that email; -1 for an email nobody has (an empty list, the same one
    another tenant's user gives a tenant admin, so the filter tells nobody who exists)."""
    if not user:
        return None
    if user.isdigit():
        return int(user)
    found = user_service.get_by_email(session, email=user[:320])
    return found.id if found is not None else -1


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    status: str = "",
    tenant_id: str = "",
    user: str = "",
    created_from: str = "",
    created_to: str = "",
    cursor: str = "",
) -> Response:
    viewer.require(Scope.jobs_admin_read)
    if status and status not in JobStatus.__members__:
        raise Unprocessable(f"unknown status: {status[:40]!r}")
    if tenant_id and not tenant_id.isdigit():
        raise Unprocessable("the tenant is its number")
    tenant = int(tenant_id) if tenant_id else None
    if tenant is not None:
        viewer.principal.ensure_tenant_visible(tenant, what="tenant")
    user_id = _user_filter(session, user.strip())
    rows = (
        job_queries.list_for_admin(
            session,
            tenant_scope=viewer.principal.tenant_scope,
            tenant_id=tenant,
            user_id=user_id,
            status=status or None,
            created_after=parse_local(created_from, viewer.tz),
            created_before=parse_local(created_to, viewer.tz),
            before_id=decode_cursor(cursor),
            limit=PAGE_SIZE,
        )
        if user_id != -1
        else []
    )
    ids = {row.public_id: row.id for row in rows}
    page = make_page([AdminJobRead.from_row(r) for r in rows], limit=PAGE_SIZE, id_of=lambda item: ids[item.id])
    filters = {
        "status": status,
        "tenant_id": tenant_id,
        "user": user.strip(),
        "created_from": created_from,
        "created_to": created_to,
    }
    return render(
        request,
        viewer,
        "jobs/list.html",
        page=page,
        filters=filters,
        statuses=[s.value for s in JobStatus],
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, session: SessionDep, viewer: ViewerDep, job_id: str, done: str = "") -> Response:
    viewer.require(Scope.jobs_admin_read)
    job = job_queries.admin_detail(session, public_id=job_id, tenant_scope=viewer.principal.tenant_scope)
    return render(
        request,
        viewer,
        "jobs/detail.html",
        job=job,
        cancelable=job.status in CANCELABLE and job.cancel_requested_at is None,
        done=done,
    )


@router.get("/jobs/{job_id}/thumbnail")
def job_thumbnail(session: SessionDep, viewer: ViewerDep, storage: StorageDep, job_id: str) -> Response:
    viewer.require(Scope.jobs_admin_results)
    job = job_queries.get_for_admin(session, public_id=job_id, tenant_scope=viewer.principal.tenant_scope)
    thumbnail = result_thumbnail(storage, job)
    return Response(thumbnail.data, media_type=thumbnail.content_type, headers={"Cache-Control": "private, no-store"})


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, job_id: str) -> Response:
    viewer.require(Scope.jobs_admin_write)
    job = job_queries.get_for_admin(session, public_id=job_id, tenant_scope=viewer.principal.tenant_scope)
    canceled = jobs.cancel_for_admin(session, context=viewer.context, redis=request.app.state.redis, job=job)
    done = "canceled" if canceled.status == JobStatus.canceled else "requested"
    return redirect(request, f"/jobs/{canceled.public_id}", done=done)
