from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, SettingsDep, page_params, request_context, require
from facemint.pagination import Page, PageParams, make_page
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan, TenantStatus
from facemint.tenants.schemas import TenantCreate, TenantRead, TenantUpdate

router = APIRouter(prefix="/admin/v1/tenants", tags=["tenants"])

Reader = Annotated[Principal, Depends(require(Scope.tenants_read))]
Writer = Annotated[Principal, Depends(require(Scope.tenants_write))]


@router.post("", response_model=TenantRead, status_code=status.HTTP_201_CREATED)
def create_tenant(
    body: TenantCreate, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> TenantRead:
    tenant = tenant_service.create(session, context=request_context(request, principal, settings), data=body)
    return TenantRead.model_validate(tenant)


@router.get("", response_model=Page[TenantRead])
def list_tenants(
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    status: TenantStatus | None = None,
    plan: Plan | None = None,
    name: Annotated[str | None, Query(max_length=200, description="substring match")] = None,
) -> Page[TenantRead]:
    tenants = tenant_service.list_tenants(
        session,
        tenant_scope=principal.tenant_scope,
        status=status,
        plan=plan,
        name_contains=name,
        before_id=page.before_id,
        limit=page.limit,
    )
    items = [TenantRead.model_validate(t) for t in tenants]
    return make_page(items, limit=page.limit)


@router.get("/{tenant_id}", response_model=TenantRead)
def get_tenant(tenant_id: int, session: SessionDep, principal: Reader) -> TenantRead:
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return TenantRead.model_validate(tenant)


@router.patch("/{tenant_id}", response_model=TenantRead)
def update_tenant(
    tenant_id: int,
    body: TenantUpdate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
) -> TenantRead:
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    tenant = tenant_service.update(
        session, context=request_context(request, principal, settings), tenant=tenant, data=body
    )
    return TenantRead.model_validate(tenant)


def _set_status(
    tenant_id: int,
    status: TenantStatus,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Principal,
) -> TenantRead:
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    tenant = tenant_service.update(
        session, context=request_context(request, principal, settings), tenant=tenant, data=TenantUpdate(status=status)
    )
    return TenantRead.model_validate(tenant)


@router.post("/{tenant_id}/suspend", response_model=TenantRead)
def suspend_tenant(
    tenant_id: int, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> TenantRead:
    return _set_status(tenant_id, TenantStatus.suspended, request, session, settings, principal)


@router.post("/{tenant_id}/activate", response_model=TenantRead)
def activate_tenant(
    tenant_id: int, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> TenantRead:
    return _set_status(tenant_id, TenantStatus.active, request, session, settings, principal)
