"""/admin/v1/jobs: every job within the caller's tenant scope (staff: all; a tenant admin: its tenant's), its
hold, timings and webhook attempts, a thumbnail of its result, and cancel (the owner's cancel, audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, SettingsDep, page_params, request_context, require
from facemint.jobs import queries as job_queries
from facemint.jobs import service as jobs
from facemint.jobs.endpoints import StorageDep
from facemint.jobs.orm import JobStatus
from facemint.jobs.schemas import AdminJobDetail, AdminJobRead
from facemint.jobs.thumbnails import result_thumbnail
from facemint.pagination import Page, PageParams, make_page
from facemint.timestamps import UtcDatetime
from facemint.webhooks import service as webhook_service
from facemint.webhooks.schemas import WebhookEventRead

router = APIRouter(prefix="/admin/v1/jobs", tags=["jobs (admin)"])

Reader = Annotated[Principal, Depends(require(Scope.jobs_admin_read))]
Writer = Annotated[Principal, Depends(require(Scope.jobs_admin_write))]
# The result is the customer's picture: not part of finance's read-everything scopes.
ResultViewer = Annotated[Principal, Depends(require(Scope.jobs_admin_results))]


@router.get("", response_model=Page[AdminJobRead])
def list_jobs(
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    status: JobStatus | None = None,
    tenant_id: int | None = None,
    user_id: int | None = None,
    created_after: Annotated[UtcDatetime | None, Query(description="UTC unless an offset is given")] = None,
    created_before: Annotated[UtcDatetime | None, Query(description="UTC unless an offset is given")] = None,
) -> Page[AdminJobRead]:
    """Newest first. A tenant admin sees its own tenant's jobs; naming another tenant is 404."""
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    rows = job_queries.list_for_admin(
        session,
        tenant_scope=principal.tenant_scope,
        tenant_id=tenant_id,
        user_id=user_id,
        status=status,
        created_after=created_after,
        created_before=created_before,
        before_id=page.before_id,
        limit=page.limit,
    )
    ids = {row.public_id: row.id for row in rows}
    return make_page([AdminJobRead.from_row(r) for r in rows], limit=page.limit, id_of=lambda item: ids[item.id])


@router.get("/{job_id}", response_model=AdminJobDetail)
def get_job(job_id: str, session: SessionDep, principal: Reader) -> AdminJobDetail:
    """The job with its hold (tokens held, captured, released), timings and webhook attempts."""
    return job_queries.admin_detail(session, public_id=job_id, tenant_scope=principal.tenant_scope)


@router.get("/{job_id}/webhooks", response_model=list[WebhookEventRead])
def list_job_webhooks(job_id: str, session: SessionDep, principal: Reader) -> list[WebhookEventRead]:
    job = job_queries.get_for_admin(session, public_id=job_id, tenant_scope=principal.tenant_scope)
    return webhook_service.list_deliveries(session, job_id=job.id)


@router.post("/{job_id}/cancel", response_model=AdminJobDetail)
def cancel_job(
    job_id: str, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> AdminJobDetail:
    """The owner's cancel, audited. Queued: canceled now, its hold released. Running: cancel requested (the
    worker stops at its next stage and releases). Finished: 409 `job_already_finished`."""
    job = job_queries.get_for_admin(session, public_id=job_id, tenant_scope=principal.tenant_scope)
    jobs.cancel_for_admin(
        session, context=request_context(request, principal, settings), redis=request.app.state.redis, job=job
    )
    return job_queries.admin_detail(session, public_id=job_id, tenant_scope=principal.tenant_scope)


@router.get(
    "/{job_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, 410: {"description": "no result to show"}},
)
def get_thumbnail(job_id: str, session: SessionDep, principal: ResultViewer, storage: StorageDep) -> Response:
    """The result, at most 256 pixels a side. 410 `result_gone` when there is none (not succeeded, or deleted)."""
    job = job_queries.get_for_admin(session, public_id=job_id, tenant_scope=principal.tenant_scope)
    thumbnail = result_thumbnail(storage, job)
    return Response(thumbnail.data, media_type=thumbnail.content_type, headers={"Cache-Control": "private, no-store"})
