from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind
from facemint import tenancy
from facemint.audit import service as audit
from facemint.context import RequestContext
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant
from facemint.tenants.errors import TenantExists, TenantNotFound
from facemint.tenants.orm import Tenant, TenantStatus
from facemint.tenants.schemas import TenantCreate, TenantUpdate
from facemint.users import service as user_service


def snapshot(tenant: Tenant) -> dict[str, object]:
    return {
        "name": tenant.name,
        "plan": tenant.plan,
        "status": tenant.status,
        "events_webhook_url": tenant.events_webhook_url,
    }


def create(session: Session, *, context: RequestContext | None, data: TenantCreate) -> Tenant:
    if session.scalar(select(Tenant.id).where(Tenant.name == data.name)) is not None:
        raise TenantExists(f"a tenant named {data.name!r} already exists")
    tenant = Tenant(name=data.name, plan=data.plan.value, status=TenantStatus.active.value)
    tenant.pool_account_id = ledger.open_account(session, kind=AccountKind.tenant_pool, tenant_id=None)
    session.add(tenant)
    _flush_unique_name(session, data.name)
    # The pool account learns its tenant once the tenant has an id.
    ledger.assign_tenant(session, account_id=tenant.pool_account_id, tenant_id=tenant.id)
    audit.record(
        session,
        context=context,
        action="tenant.create",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
        after=snapshot(tenant),
    )
    return tenant


def _flush_unique_name(session: Session, name: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create or rename to the same name won the race
        if "uq_tenants_name" in str(exc.orig):
            raise TenantExists(f"a tenant named {name!r} already exists") from exc
        raise


def get(session: Session, *, tenant_id: int, tenant_scope: int | None) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or not tenancy.is_visible(tenant_scope, tenant.id):
        raise TenantNotFound(f"tenant {tenant_id} not found")
    return tenant


def list_tenants(
    session: Session,
    *,
    tenant_scope: int | None,
    status: str | None,
    plan: str | None,
    name_contains: str | None,
    before_id: int | None,
    limit: int,
) -> list[Tenant]:
    query = within_tenant(select(Tenant), Tenant.id, tenant_scope=tenant_scope)
    if status:
        query = query.where(Tenant.status == status)
    if plan:
        query = query.where(Tenant.plan == plan)
    if name_contains:
        query = query.where(Tenant.name.icontains(name_contains, autoescape=True))
    query = newest_first(query, Tenant.id, before_id=before_id, limit=limit)
    return list(session.scalars(query))


def update(session: Session, *, context: RequestContext, tenant: Tenant, data: TenantUpdate) -> Tenant:
    before = snapshot(tenant)
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if (
        "name" in changes
        and changes["name"] != tenant.name
        and session.scalar(select(Tenant.id).where(Tenant.name == changes["name"])) is not None
    ):
        raise TenantExists(f"a tenant named {changes['name']!r} already exists")
    for field, value in changes.items():
        setattr(tenant, field, getattr(value, "value", value))
    _flush_unique_name(session, tenant.name)
    after = snapshot(tenant)
    if after != before:
        action = "tenant.update"
        if before["status"] != after["status"]:
            action = "tenant.suspend" if after["status"] == TenantStatus.suspended else "tenant.activate"
            # Every access token of the tenant's users dies with the suspension (and the reactivation: nothing
            # issued before either outlives it).
            user_service.end_tenant_sessions(session, tenant_id=tenant.id)
        audit.record(
            session,
            context=context,
            action=action,
            target_type="tenant",
            target_id=tenant.id,
            tenant_id=tenant.id,
            before=before,
            after=after,
        )
    return tenant
