"""The tenants screen: the list (filters, keyset pages), creating one, and a tenant's page (plan, suspend and
activate, its pool's balance, filling the pool, its users). Every action calls the service the /admin/v1 route
calls, with the same scope checks; the pool recharge is POST /admin/v1/recharges with a tenant_id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from billing.ledger import service as ledger
from facemint.approvals import service as approvals
from facemint.approvals.service import Held
from facemint.auth.scopes import Scope
from facemint.console.forms import enum_filter, new_idempotency_key, validated
from facemint.console.web import CheckedForm, ViewerDep, form_text, next_page_url, redirect, render
from facemint.deps import SessionDep, SettingsDep, page_params
from facemint.errors import InvalidIdempotencyKey
from facemint.pagination import PageParams, make_page
from facemint.recharges import service as recharge_service
from facemint.recharges.schemas import RechargeCreate
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan, TenantStatus
from facemint.tenants.schemas import TenantCreate, TenantUpdate
from facemint.users import service as user_service

router = APIRouter()
TENANT_USERS_SHOWN = 20


@router.get("/tenants")
def tenants_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    page: Annotated[PageParams, Depends(page_params)],
    name: str = "",
    status: str = "",
    plan: str = "",
) -> Response:
    viewer.require(Scope.tenants_read)
    filters = {"name": name.strip()[:200], "status": enum_filter(status, TenantStatus), "plan": enum_filter(plan, Plan)}
    rows = tenant_service.list_tenants(
        session,
        tenant_scope=viewer.principal.tenant_scope,
        status=filters["status"],
        plan=filters["plan"],
        name_contains=filters["name"] or None,
        before_id=page.before_id,
        limit=page.limit,
    )
    listed = make_page(rows, limit=page.limit)
    return render(
        request,
        viewer,
        "tenants/list.html",
        tenants=listed.items,
        next_url=next_page_url(request, "/tenants", listed.next_cursor, **filters),
        filters=filters,
        plans=list(Plan),
        statuses=list(TenantStatus),
    )


@router.post("/tenants")
def create_tenant(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm) -> Response:
    viewer.require(Scope.tenants_write)
    data = validated(TenantCreate, {"name": form_text(form, "name"), "plan": form_text(form, "plan") or Plan.free})
    tenant = tenant_service.create(session, context=viewer.context, data=data)
    return redirect(request, f"/tenants/{tenant.id}")


@router.get("/tenants/{tenant_id}")
def tenant_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    tenant_id: int,
    recharged: int | None = None,
    replayed: bool = False,
    approval: int | None = None,
) -> Response:
    viewer.require(Scope.tenants_read)
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=viewer.principal.tenant_scope)
    pool = ledger.get_balance(session, account_id=tenant.pool_account_id) if viewer.can(Scope.balances_read) else None
    users = []
    if viewer.can(Scope.users_read):
        users = user_service.list_users(
            session,
            tenant_scope=viewer.principal.tenant_scope,
            tenant_id=tenant.id,
            role=None,
            status=None,
            email_contains=None,
            before_id=None,
            limit=TENANT_USERS_SHOWN,
        )
    return render(
        request,
        viewer,
        "tenants/detail.html",
        tenant=tenant,
        pool=pool,
        users=users[:TENANT_USERS_SHOWN],
        more_users=len(users) > TENANT_USERS_SHOWN,
        plans=list(Plan),
        recharge_key=new_idempotency_key(),
        # Filling a pool creates tokens: platform staff only (the service refuses anyone else).
        can_fill_pool=viewer.principal.is_staff and viewer.can(Scope.recharges_write),
        recharged=recharged,
        replayed=replayed,
        approval_id=approval,
    )


def _update(request: Request, session: SessionDep, viewer: ViewerDep, tenant_id: int, data: TenantUpdate) -> Response:
    viewer.require(Scope.tenants_write)
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=viewer.principal.tenant_scope)
    tenant_service.update(session, context=viewer.context, tenant=tenant, data=data)
    return redirect(request, f"/tenants/{tenant_id}")


@router.post("/tenants/{tenant_id}/plan")
def change_plan(
    request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, tenant_id: int
) -> Response:
    viewer.require(Scope.tenants_write)
    return _update(request, session, viewer, tenant_id, validated(TenantUpdate, {"plan": form_text(form, "plan")}))


@router.post("/tenants/{tenant_id}/suspend")
def suspend(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, tenant_id: int) -> Response:
    return _update(request, session, viewer, tenant_id, TenantUpdate(status=TenantStatus.suspended))


@router.post("/tenants/{tenant_id}/activate")
def activate(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, tenant_id: int) -> Response:
    return _update(request, session, viewer, tenant_id, TenantUpdate(status=TenantStatus.active))


@router.post("/tenants/{tenant_id}/recharge")
def recharge_pool(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    form: CheckedForm,
    tenant_id: int,
) -> Response:
    """POST /admin/v1/recharges with `tenant_id`: the same scope, ceiling, idempotency and four-eyes rules; the
    form's Idempotency-Key was fixed when the page was drawn."""
    viewer.require(Scope.recharges_write)
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=viewer.principal.tenant_scope)
    idempotency_key = form_text(form, "idempotency_key")
    if not idempotency_key or len(idempotency_key) > 255 or not idempotency_key.isascii():
        raise InvalidIdempotencyKey("the form's idempotency key is missing or malformed; reload the page")
    data = validated(
        RechargeCreate,
        {
            "tenant_id": tenant.id,
            "amount": _whole_number(form_text(form, "amount")),
            "reason": form_text(form, "reason"),
            "reference": form_text(form, "reference") or None,
        },
    )
    outcome = recharge_service.submit_recharge(
        session,
        context=viewer.context,
        data=data,
        idempotency_key=idempotency_key,
        policy=approvals.Policy.from_settings(settings),
        ceiling=settings.recharge_max_amount,
    )
    if isinstance(outcome, Held):
        return redirect(request, f"/tenants/{tenant.id}", approval=outcome.approval.id)
    return redirect(
        request, f"/tenants/{tenant.id}", recharged=outcome.transaction_id, replayed="1" if outcome.replayed else None
    )


def _whole_number(value: str) -> int | str:
    """A typed amount as an int when it is one (the schema is strict: it refuses anything else by name)."""
    stripped = value.replace(",", "").replace("_", "").strip()
    return int(stripped) if stripped.isdigit() and len(stripped) < 20 else value
