"""/admin/v1/grants: recurring credit grants. Reading is `grants:read` (staff every grant, tenant admins their
tenant's); making and changing is `grants:write`, plan grants and platform-funded grants for platform admins and
operators only, and each of those, and any change that lets one mint more, held (202) until a second operator
approves it at /admin/v1/recharge-approvals (`facemint.grants.service`). The workers do the granting
(`facemint.grants.issuing`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import JSONResponse

from facemint.approvals import service as approvals
from facemint.approvals.endpoints import held_response
from facemint.approvals.schemas import ApprovalRead
from facemint.approvals.service import Held
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, SettingsDep, page_params, request_context, require
from facemint.grants import service as grants
from facemint.grants.orm import GrantScope
from facemint.grants.schemas import GrantCreate, GrantPeriodRead, GrantRead, GrantUpdate
from facemint.pagination import Page, PageParams, make_page

router = APIRouter(prefix="/admin/v1/grants", tags=["grants"])

Reader = Annotated[Principal, Depends(require(Scope.grants_read))]
Writer = Annotated[Principal, Depends(require(Scope.grants_write))]

HELD_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ApprovalRead,
        "description": "held for a second operator (a platform-funded grant, or a change letting one mint more; a "
        "pool-funded one above the approval thresholds): nothing made or changed until approved at "
        "/admin/v1/recharge-approvals (kind `grant`). Not replayed: sending it again holds another",
    }
}


@router.post("", response_model=GrantRead, status_code=status.HTTP_201_CREATED, responses=HELD_RESPONSES)
def create_grant(
    body: GrantCreate, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> GrantRead | JSONResponse:
    outcome = grants.submit_create(
        session,
        context=request_context(request, principal, settings),
        data=body,
        ceiling=settings.recharge_max_amount,
        policy=approvals.Policy.from_settings(settings),
    )
    if isinstance(outcome, Held):
        return held_response(outcome)
    return GrantRead.model_validate(outcome)


@router.get("", response_model=Page[GrantRead])
def list_grants(
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    tenant_id: int | None = None,
    scope: GrantScope | None = None,
    enabled: bool | None = None,
) -> Page[GrantRead]:
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    found = grants.list_grants(
        session,
        tenant_scope=principal.tenant_scope,
        tenant_id=tenant_id,
        scope=scope,
        enabled=enabled,
        before_id=page.before_id,
        limit=page.limit,
    )
    return make_page([GrantRead.model_validate(g) for g in found], limit=page.limit)


@router.get("/{grant_id}", response_model=GrantRead)
def get_grant(grant_id: int, session: SessionDep, principal: Reader) -> GrantRead:
    return GrantRead.model_validate(grants.get(session, grant_id=grant_id, tenant_scope=principal.tenant_scope))


@router.patch("/{grant_id}", response_model=GrantRead, responses=HELD_RESPONSES)
def update_grant(
    grant_id: int,
    body: GrantUpdate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
) -> GrantRead | JSONResponse:
    grant = grants.get(session, grant_id=grant_id, tenant_scope=principal.tenant_scope)
    outcome = grants.submit_update(
        session,
        context=request_context(request, principal, settings),
        grant=grant,
        data=body,
        ceiling=settings.recharge_max_amount,
        policy=approvals.Policy.from_settings(settings),
    )
    if isinstance(outcome, Held):
        return held_response(outcome)
    return GrantRead.model_validate(outcome)


@router.get("/{grant_id}/periods", response_model=Page[GrantPeriodRead])
def list_grant_periods(
    grant_id: int, session: SessionDep, principal: Reader, page: Annotated[PageParams, Depends(page_params)]
) -> Page[GrantPeriodRead]:
    """The periods the workers granted (or found the pool short for), newest first."""
    grant = grants.get(session, grant_id=grant_id, tenant_scope=principal.tenant_scope)
    found = grants.list_periods(session, grant=grant, before_id=page.before_id, limit=page.limit)
    return make_page([GrantPeriodRead.model_validate(p) for p in found], limit=page.limit)
