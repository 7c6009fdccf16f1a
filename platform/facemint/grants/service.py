"""Recurring grants' definitions: who may make and change which, and reading them with their periods. Plan
grants and platform-funded grants create tokens, so only platform admins and operators make or change them; a
tenant admin makes and changes its own tenant's pool-funded grants, and reads every grant of its tenant. Plan
grants belong to no tenant: tenant roles never see them (`facemint.tenancy`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint import tenancy
from facemint.audit import service as audit
from facemint.auth.principal import Principal
from facemint.context import RequestContext
from facemint.errors import Forbidden
from facemint.grants.errors import GrantNotFound, InvalidGrant
from facemint.grants.orm import CreditGrant, CreditGrantPeriod, Funding, GrantScope
from facemint.grants.schemas import GrantCreate, GrantUpdate
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant
from facemint.tenants.errors import TenantNotFound
from facemint.tenants.orm import Tenant

_SNAPSHOT = (
    "name", "scope", "plan", "tenant_id", "label", "amount", "period", "priority", "funding", "enabled", "starts_at",
    "ends_at",
)  # fmt: skip


def snapshot(grant: CreditGrant) -> dict[str, Any]:
    values = {field: getattr(grant, field) for field in _SNAPSHOT}
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def _ensure_may_issue(principal: Principal | None, *, scope: str, funding: str) -> None:
    """Plan grants and platform-funded grants mint tokens: platform staff's (who hold `grants:write`) only."""
    if principal is None or principal.is_staff:
        return
    if scope == GrantScope.plan:
        raise Forbidden("plan grants are made and changed by platform admins and operators")
    if funding == Funding.platform:
        raise Forbidden("a tenant's grants are paid from its pool (funding tenant_pool); only staff issue tokens")


def _check_amount(amount: int, ceiling: int) -> None:
    if amount > ceiling:
        raise InvalidGrant(f"amount is above the ceiling of {ceiling} tokens per account and period", ceiling=ceiling)


def create(session: Session, *, context: RequestContext | None, data: GrantCreate, ceiling: int) -> CreditGrant:
    principal = context.principal if context else None
    tenant_id: int | None = None
    if data.scope is GrantScope.tenant:
        scope = principal.tenant_scope if principal else None
        tenant_id = tenancy.acting_tenant(
            scope, data.tenant_id, not_found=TenantNotFound(f"tenant {data.tenant_id} not found")
        )
        if tenant_id is None:
            raise InvalidGrant("a tenant grant needs a tenant_id")
        if session.get(Tenant, tenant_id) is None:
            raise TenantNotFound(f"tenant {tenant_id} not found")
    _ensure_may_issue(principal, scope=data.scope, funding=data.funding)
    _check_amount(data.amount, ceiling)
    if data.ends_at is not None and data.ends_at <= (data.starts_at or datetime.now(UTC)):
        raise InvalidGrant("ends_at must be after starts_at and in the future")
    grant = CreditGrant(
        name=data.name,
        scope=data.scope.value,
        plan=data.plan.value if data.plan else None,
        tenant_id=tenant_id,
        label=data.label,
        amount=data.amount,
        period=data.period.value,
        priority=data.priority,
        funding=data.funding.value,
        enabled=data.enabled,
        ends_at=data.ends_at,
        created_by=principal.label if principal else None,
    )
    if data.starts_at is not None:
        grant.starts_at = data.starts_at
    session.add(grant)
    session.flush()
    session.refresh(grant)  # starts_at and the timestamps, as the database set them
    audit.record(
        session,
        context=context,
        action="grant.create",
        target_type="credit_grant",
        target_id=grant.id,
        tenant_id=grant.tenant_id,
        after=snapshot(grant),
    )
    return grant


def get(session: Session, *, grant_id: int, tenant_scope: int | None) -> CreditGrant:
    grant = session.get(CreditGrant, grant_id)
    if grant is None:
        raise GrantNotFound(f"grant {grant_id} not found")
    tenancy.ensure_visible(tenant_scope, grant.tenant_id, not_found=GrantNotFound(f"grant {grant_id} not found"))
    return grant


def list_grants(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    scope: GrantScope | None,
    enabled: bool | None,
    before_id: int | None,
    limit: int,
) -> list[CreditGrant]:
    """Newest first: staff see every grant (plan grants included), a tenant role its tenant's."""
    query = within_tenant(select(CreditGrant), CreditGrant.tenant_id, tenant_scope=tenant_scope, tenant_id=tenant_id)
    if scope is not None:
        query = query.where(CreditGrant.scope == scope.value)
    if enabled is not None:
        query = query.where(CreditGrant.enabled.is_(enabled))
    return list(session.scalars(newest_first(query, CreditGrant.id, before_id=before_id, limit=limit)))


def update(
    session: Session, *, context: RequestContext, grant: CreditGrant, data: GrantUpdate, ceiling: int
) -> CreditGrant:
    _ensure_may_issue(context.principal, scope=grant.scope, funding=grant.funding)
    changes = data.model_dump(exclude_unset=True)
    for field in ("name", "amount", "priority", "enabled", "starts_at"):
        if field in changes and changes[field] is None:
            raise InvalidGrant(f"{field} cannot be null")
    if changes.get("label") is not None and grant.scope == GrantScope.plan:
        raise InvalidGrant("a plan grant has no label (it is for every user on the plan)")
    if "amount" in changes:
        _check_amount(changes["amount"], ceiling)
    before = snapshot(grant)
    for field, value in changes.items():
        setattr(grant, field, value)
    if grant.ends_at is not None and grant.ends_at <= grant.starts_at:
        raise InvalidGrant("ends_at must be after starts_at")
    session.flush()
    after = snapshot(grant)
    if after != before:
        audit.record(
            session,
            context=context,
            action="grant.update",
            target_type="credit_grant",
            target_id=grant.id,
            tenant_id=grant.tenant_id,
            before=before,
            after=after,
        )
    return grant


def list_periods(session: Session, *, grant: CreditGrant, before_id: int | None, limit: int) -> list[CreditGrantPeriod]:
    """The grant's periods the workers granted (or found short), newest first."""
    query = select(CreditGrantPeriod).where(CreditGrantPeriod.grant_id == grant.id)
    return list(session.scalars(newest_first(query, CreditGrantPeriod.id, before_id=before_id, limit=limit)))


# The reconciliation's checks of recurring grants (`facemint.reports.service.reconcile_all`): each award is one
# credit of its amount to its account in its transaction, and nothing else; each period's figures are its awards';
# each grant's lots expire by the end of the period they were granted for.
RECONCILIATION_CHECKS: dict[str, tuple[str, str]] = {
    "grant_award_entry_mismatch": (
        "each grant award is a credit of its amount to its account in its transaction",
        """
        SELECT a.account_id AS id, 'transaction ' || a.transaction_id AS detail FROM grant_awards a
        LEFT JOIN ledger_entries e ON e.transaction_id = a.transaction_id AND e.account_id = a.account_id
        WHERE e.amount IS DISTINCT FROM a.amount
        """,
    ),
    "grant_transaction_unawarded": (
        "a grant's transaction credits only the accounts it awards",
        """
        SELECT x.transaction_id AS id, x.credits - x.awards AS detail FROM (
            SELECT a.transaction_id, count(*) AS awards,
                   (SELECT count(*) FROM ledger_entries e JOIN ledger_accounts acc ON acc.id = e.account_id
                    WHERE e.transaction_id = a.transaction_id AND e.amount > 0 AND acc.balance_tracked) AS credits
            FROM grant_awards a GROUP BY a.transaction_id
        ) x WHERE x.credits <> x.awards
        """,
    ),
    "grant_period_mismatch": (
        "each grant period's granted accounts and tokens are what its awards add up to",
        """
        SELECT p.id, p.granted_tokens - coalesce(a.tokens, 0) AS detail FROM credit_grant_periods p
        LEFT JOIN (
            SELECT grant_id, period_start, count(*) AS accounts, sum(amount) AS tokens FROM grant_awards
            GROUP BY grant_id, period_start
        ) a ON a.grant_id = p.grant_id AND a.period_start = p.period_start
        WHERE p.granted_accounts <> coalesce(a.accounts, 0) OR p.granted_tokens <> coalesce(a.tokens, 0)
        """,
    ),
    "grant_lot_outlives_period": (
        "a grant's lots are `grant` lots expiring by the end of the period they were granted for",
        """
        SELECT l.id, coalesce(l.expires_at::text, 'no expiry') AS detail FROM grant_awards a
        JOIN credit_grant_periods p ON p.grant_id = a.grant_id AND p.period_start = a.period_start
        JOIN credit_lots l ON l.transaction_id = a.transaction_id AND l.account_id = a.account_id
        WHERE l.source <> 'grant' OR l.expires_at IS NULL OR l.expires_at > p.period_end
        """,
    ),
}
