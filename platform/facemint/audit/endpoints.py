from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from facemint.audit import service as audit_service
from facemint.audit.schemas import AuditEventRead
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, page_params, require
from facemint.pagination import Page, PageParams, make_page
from facemint.timestamps import UtcDatetime

router = APIRouter(prefix="/admin/v1/audit-events", tags=["audit"])


@router.get("", response_model=Page[AuditEventRead])
def list_audit_events(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Scope.audit_read))],
    page: Annotated[PageParams, Depends(page_params)],
    tenant_id: int | None = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    actor_user_id: int | None = None,
    target_type: Annotated[str | None, Query(max_length=100)] = None,
    target_id: Annotated[str | None, Query(max_length=100)] = None,
    from_: Annotated[UtcDatetime | None, Query(alias="from", description="inclusive; UTC unless an offset")] = None,
    to: Annotated[UtcDatetime | None, Query(description="exclusive; UTC unless an offset")] = None,
) -> Page[AuditEventRead]:
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    events = audit_service.list_events(
        session,
        tenant_scope=principal.tenant_scope,
        tenant_id=tenant_id,
        action=action,
        actor_user_id=actor_user_id,
        target_type=target_type,
        target_id=target_id,
        before_id=page.before_id,
        limit=page.limit,
        start=from_,
        end=to,
    )
    items = [audit_service.read(e, tenant_scope=principal.tenant_scope) for e in events]
    return make_page(items, limit=page.limit)
