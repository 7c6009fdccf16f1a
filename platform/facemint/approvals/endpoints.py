"""Four-eyes approvals of held requests (large recharges and batches, adjustments, reversals, whatever passes the
requester's 24-hour total, and recurring grants that mint tokens): read with `recharges:read` (tenant admins see
their tenant's, with other tenants' users redacted), decide with `recharges:approve` (platform admins and
operators)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response

from facemint.approvals import approving
from facemint.approvals import service as approvals
from facemint.approvals.errors import ApprovalExpired
from facemint.approvals.schemas import ApprovalDecision, ApprovalDetail, ApprovalRead, Kind, Status
from facemint.approvals.service import Held
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, SettingsDep, page_params, request_context, require
from facemint.pagination import Page, PageParams, make_page
from facemint.problems import problem_response

# For the routes that may hold what they are asked (recharges, batches, adjustments, reversals).
HELD_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ApprovalRead,
        "description": "held for a second operator (above a threshold, or past the requester's 24-hour total): "
        "nothing applied; the same Idempotency-Key answers with the approval until approved, then with the applied "
        "result",
    }
}


def held_response(held: Held) -> JSONResponse:
    """202 with the approval (the requester's own request: nothing to redact)."""
    headers = {"Idempotent-Replayed": "true"} if held.replayed else {}
    body = ApprovalRead.model_validate(held.approval).model_dump(mode="json")
    return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED, headers=headers)


router = APIRouter(prefix="/admin/v1/recharge-approvals", tags=["recharge approvals"])

Reader = Annotated[Principal, Depends(require(Scope.recharges_read))]
Approver = Annotated[Principal, Depends(require(Scope.recharges_approve))]
ApprovalId = Annotated[int, Path(gt=0, lt=2**63)]


@router.get("", response_model=Page[ApprovalRead])
def list_approvals(
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    status: Status | None = None,
    kind: Kind | None = None,
    tenant_id: Annotated[int | None, Query(gt=0, lt=2**63)] = None,
) -> Page[ApprovalRead]:
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    rows = approvals.list_approvals(
        session,
        tenant_scope=principal.tenant_scope,
        tenant_id=tenant_id,
        status=status,
        kind=kind,
        before_id=page.before_id,
        limit=page.limit,
    )
    scope = principal.tenant_scope
    return make_page([ApprovalRead.for_reader(row, tenant_scope=scope) for row in rows], limit=page.limit)


@router.get("/{approval_id}", response_model=ApprovalDetail)
def get_approval(approval_id: ApprovalId, session: SessionDep, principal: Reader) -> ApprovalDetail:
    approval = approvals.get(session, approval_id=approval_id, tenant_scope=principal.tenant_scope)
    return ApprovalDetail(
        **ApprovalRead.for_reader(approval, tenant_scope=principal.tenant_scope).model_dump(),
        request=approvals.request_view(approval, staff=principal.is_staff),
    )


@router.post(
    "/{approval_id}/approve",
    response_model=ApprovalRead,
    responses={
        403: {"description": "`self_approval`: the requester cannot approve their own request"},
        409: {"description": "`approval_expired` (now marked expired) or `approval_not_pending`"},
    },
)
def approve(
    approval_id: ApprovalId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Approver,
    body: ApprovalDecision | None = None,
) -> ApprovalRead | Response:
    try:
        approval = approving.approve(
            session,
            context=request_context(request, principal, settings),
            approval_id=approval_id,
            note=body.note if body else None,
        )
    except ApprovalExpired as exc:
        return _refused_but_recorded(request, exc)
    return ApprovalRead.for_reader(approval, tenant_scope=principal.tenant_scope)


@router.post(
    "/{approval_id}/reject",
    response_model=ApprovalRead,
    responses={409: {"description": "`approval_expired` (now marked expired) or `approval_not_pending`"}},
)
def reject(
    approval_id: ApprovalId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Approver,
    body: ApprovalDecision | None = None,
) -> ApprovalRead | Response:
    try:
        approval = approvals.reject(
            session,
            context=request_context(request, principal, settings),
            approval_id=approval_id,
            note=body.note if body else None,
        )
    except ApprovalExpired as exc:
        return _refused_but_recorded(request, exc)
    return ApprovalRead.for_reader(approval, tenant_scope=principal.tenant_scope)


def _refused_but_recorded(request: Request, exc: ApprovalExpired) -> Response:
    # Answered, not raised: a raised error rolls the request back, and the approval was just marked expired
    # (with its audit event) in this transaction. Nothing else was written before the expiry was found.
    return problem_response(
        request, status=exc.status_code, code=exc.code, title=exc.title, detail=exc.detail, extra=exc.extra
    )
