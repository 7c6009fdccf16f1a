"""The approvals screen: the four-eyes queue (pending first; filters by status and kind), each held request with
its rows, and approving or rejecting it with a note. The same services as /admin/v1/recharge-approvals with the
same scopes: `recharges:read` to look, `recharges:approve` to decide; the requester is shown no buttons and is
refused by `approving.approve` anyway (`self_approval`). A viewer with a second factor gives a current code to
approve."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from facemint.approvals import approving
from facemint.approvals import service as approvals
from facemint.approvals.errors import ApprovalExpired
from facemint.approvals.orm import ApprovalKind, ApprovalStatus
from facemint.approvals.schemas import ApprovalRead
from facemint.auth.scopes import Scope
from facemint.console.forms import enum_filter
from facemint.console.web import (
    CheckedForm,
    Viewer,
    ViewerDep,
    form_text,
    has_second_factor,
    next_page_url,
    redirect,
    render,
    require_second_factor,
)
from facemint.deps import SessionDep, page_params
from facemint.pagination import PageParams, make_page

router = APIRouter()
STATUSES = tuple(status.value for status in ApprovalStatus)
KINDS = tuple(kind.value for kind in ApprovalKind)
NOTE_MAX = 500


@router.get("/approvals")
def approvals_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    page: Annotated[PageParams, Depends(page_params)],
    status: str = "pending",
    kind: str = "",
) -> Response:
    """The queue opens on what waits (`pending`); `status=all` lists every outcome. Newest first."""
    viewer.require(Scope.recharges_read)
    status_filter = enum_filter(status, ApprovalStatus)
    kind_filter = enum_filter(kind, ApprovalKind)
    scope = viewer.principal.tenant_scope
    rows = approvals.list_approvals(
        session,
        tenant_scope=scope,
        tenant_id=None,
        status=status_filter,
        kind=kind_filter,
        before_id=page.before_id,
        limit=page.limit,
    )
    listed = make_page([ApprovalRead.for_reader(row, tenant_scope=scope) for row in rows], limit=page.limit)
    return render(
        request,
        viewer,
        "approvals/index.html",
        approvals=listed.items,
        next_url=next_page_url(
            request, "/approvals", listed.next_cursor, status=status_filter or "all", kind=kind_filter
        ),
        status_filter=status_filter or "all",
        kind_filter=kind_filter or "",
        statuses=STATUSES,
        kinds=KINDS,
    )


def _detail(request: Request, session: Session, viewer: Viewer, approval_id: int, *, status: int = 200) -> Response:
    scope = viewer.principal.tenant_scope
    approval = approvals.get(session, approval_id=approval_id, tenant_scope=scope)
    own = approval.requested_by_user_id == viewer.principal.user_id
    return render(
        request,
        viewer,
        "approvals/detail.html",
        status=status,
        approval=ApprovalRead.for_reader(approval, tenant_scope=scope),
        held_request=approvals.request_view(approval, staff=viewer.principal.is_staff),
        own=own,
        # Buttons only for those the service would let decide: an approver who did not ask for it.
        may_decide=viewer.can(Scope.recharges_approve) and not own and approval.status == ApprovalStatus.pending,
        needs_code=has_second_factor(session, viewer),
    )


@router.get("/approvals/{approval_id}")
def approval_page(request: Request, session: SessionDep, viewer: ViewerDep, approval_id: int) -> Response:
    viewer.require(Scope.recharges_read)
    return _detail(request, session, viewer, _checked_id(approval_id))


@router.post("/approvals/{approval_id}/approve")
def approve(request: Request, session: SessionDep, viewer: ViewerDep, approval_id: int, form: CheckedForm) -> Response:
    """As POST /admin/v1/recharge-approvals/{id}/approve; with a second factor enrolled, a current code first."""
    viewer.require(Scope.recharges_approve)
    require_second_factor(request, session, viewer, form_text(form, "code"))
    try:
        approving.approve(
            session, context=viewer.context, approval_id=_checked_id(approval_id), note=_note(form_text(form, "note"))
        )
    except ApprovalExpired as exc:
        return _expired(request, viewer, exc)
    return redirect(request, f"/approvals/{approval_id}", decided="approved")


@router.post("/approvals/{approval_id}/reject")
def reject(request: Request, session: SessionDep, viewer: ViewerDep, approval_id: int, form: CheckedForm) -> Response:
    """As POST /admin/v1/recharge-approvals/{id}/reject: nothing is applied."""
    viewer.require(Scope.recharges_approve)
    try:
        approvals.reject(
            session, context=viewer.context, approval_id=_checked_id(approval_id), note=_note(form_text(form, "note"))
        )
    except ApprovalExpired as exc:
        return _expired(request, viewer, exc)
    return redirect(request, f"/approvals/{approval_id}", decided="rejected")


def _checked_id(approval_id: int) -> int:
    # Past bigint is no approval: the service's own 404, not a database error.
    return approval_id if 0 < approval_id < 2**63 else 0


def _note(value: str) -> str | None:
    return value[:NOTE_MAX] or None


def _expired(request: Request, viewer: Viewer, exc: ApprovalExpired) -> Response:
    # Answered, not raised (as the API does): the expiry was just recorded in this transaction, and a raised
    # error would roll it back.
    problem = {"status": exc.status_code, "code": exc.code, "title": exc.title, "detail": exc.detail}
    return render(request, None, "problem.html", status=exc.status_code, problem=problem)
