"""Recurring grants' definitions: who may make and change which, four eyes on those that mint tokens, and reading
them with their periods. Plan grants and platform-funded grants create tokens, so only platform admins and operators
make or change them, and each takes effect only once a second one approves it: a platform-funded grant's creation,
and any change that lets it mint more (`widens`), is held in the approvals queue (kind `grant`, always, whatever
its size) and applied on approval (`facemint.grants.approving`); a narrowing change applies at once. A tenant admin
makes and changes its own tenant's pool-funded grants, held only where the approval policy would hold a batch of
one period's credits to the accounts eligible now; it reads every grant of its tenant. Plan grants belong to no
tenant: tenant roles never see them (`facemint.tenancy`)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint import tenancy
from facemint.approvals import service as approvals
from facemint.approvals.orm import ApprovalKind, RechargeApproval
from facemint.approvals.service import Held, approved_from
from facemint.audit import service as audit
from facemint.auth.principal import Principal
from facemint.context import RequestContext
from facemint.errors import Forbidden
from facemint.grants import issuing
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
# What decides how much a grant mints, beyond what fixes its meaning (scope, plan, tenant, period, funding).
MINTING_TERMS = ("amount", "enabled", "label", "starts_at", "ends_at")
# `held_because` of a platform-funded grant: reviewed whatever its size, since what it mints each period grows
# with the eligible accounts, and it runs for ever.
PLATFORM_GRANT = "platform_grant"
_BIGINT_MAX = 2**63 - 1


def _values(grant: CreditGrant) -> dict[str, Any]:
    return {field: getattr(grant, field) for field in _SNAPSHOT}


def _as_json(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def snapshot(grant: CreditGrant) -> dict[str, Any]:
    return _as_json(_values(grant))


def widens(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether a grant with terms `after` may mint more than with `before` (the database's
    `facemint_grant_widens`, migration 0016, is the same test): a larger amount, enabled again, its label changed
    or dropped (setting one where there was none narrows), an earlier start, a later end or none."""
    old_ends, new_ends = before["ends_at"], after["ends_at"]
    return bool(
        after["amount"] > before["amount"]
        or (after["enabled"] and not before["enabled"])
        or (before["label"] is not None and after["label"] != before["label"])
        or after["starts_at"] < before["starts_at"]
        or (old_ends is not None and (new_ends is None or new_ends > old_ends))
    )


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


def _hold_reason(policy: approvals.Policy, *, funding: str, amount: int, eligible: int) -> str | None:
    """Why a grant (or a change letting it mint more) waits for a second operator, or None when it applies now.
    A pool-funded grant's period is weighed as a batch of `eligible` rows of `amount`, as the tenant's batch from
    its pool would be."""
    if funding == Funding.platform:
        return PLATFORM_GRANT
    return policy.size_reason(amount=min(amount * eligible, _BIGINT_MAX), largest=amount)


# --- making ----------------------------------------------------------------------------------------------


def _checked_create(session: Session, *, principal: Principal | None, data: GrantCreate, ceiling: int) -> int | None:
    """Refuse what may not or cannot be made; returns the grant's tenant (None for a plan grant)."""
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
    _check_not_ended(data)
    return tenant_id


def _check_not_ended(data: GrantCreate) -> None:
    if data.ends_at is not None and data.ends_at <= (data.starts_at or datetime.now(UTC)):
        raise InvalidGrant("ends_at must be after starts_at and in the future")


def submit_create(
    session: Session, *, context: RequestContext, data: GrantCreate, ceiling: int, policy: approvals.Policy
) -> CreditGrant | Held:
    """Make a grant, or hold it for a second operator (`Held`): every platform-funded grant, and a pool-funded one
    whose period the policy would hold (`_hold_reason`). Whatever would be refused is refused first."""
    principal = context.principal
    tenant_id = _checked_create(session, principal=principal, data=data, ceiling=ceiling)
    eligible = issuing.eligible_accounts(
        session, scope=data.scope, plan=data.plan, tenant_id=tenant_id, label=data.label
    )
    held_because = _hold_reason(policy, funding=data.funding, amount=data.amount, eligible=eligible)
    if held_because is None:
        return insert(session, context=context, data=data, tenant_id=tenant_id, created_by=principal.label)
    body = data.model_dump(mode="json") | {"tenant_id": tenant_id}
    terms = {field: body.get(field) for field in _SNAPSHOT}  # starts_at null: from the approval on
    return _hold(
        session,
        context=context,
        policy=policy,
        tenant_id=tenant_id,
        payload={"change": "create", "grant_id": None, "body": body, "terms": terms, "created_by": principal.label},
        eligible=eligible,
        held_because=held_because,
        reason=f"new {data.funding.value} grant '{data.name}': {data.amount} tokens a {data.period.value} per account",
    )


def create(session: Session, *, context: RequestContext | None, data: GrantCreate, ceiling: int) -> CreditGrant:
    """Make a pool-funded grant now, unreviewed: for in-process callers (tests, benchmarks), never for the API
    (`submit_create`). A platform-funded grant is made only from its approval (`facemint.grants.approving`)."""
    if data.funding is Funding.platform:
        raise ValueError("a platform-funded grant is made from an approved request: submit_create, then approve it")
    principal = context.principal if context else None
    tenant_id = _checked_create(session, principal=principal, data=data, ceiling=ceiling)
    return insert(
        session, context=context, data=data, tenant_id=tenant_id, created_by=principal.label if principal else None
    )


def insert(
    session: Session,
    *,
    context: RequestContext | None,
    data: GrantCreate,
    tenant_id: int | None,
    created_by: str | None,
    approval: RechargeApproval | None = None,
) -> CreditGrant:
    """Write a checked grant (and its audit event); `approval`: the approved request it comes from."""
    if approval is not None:
        _check_not_ended(data)  # it may have ended while it waited
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
        created_by=created_by,
        approval_id=approval.id if approval is not None else None,
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
        after=snapshot(grant) | approved_from(approval),
    )
    return grant


def _hold(
    session: Session,
    *,
    context: RequestContext,
    policy: approvals.Policy,
    tenant_id: int | None,
    payload: dict[str, Any],
    eligible: int,
    held_because: str,
    reason: str,
) -> Held:
    """Hold a grant request: its approval shows the terms it would take and one period's mint at the accounts
    eligible now. Not replayed by a key: sending it again holds another, as making a grant twice makes two."""
    amount = int(payload["terms"]["amount"])
    summary: dict[str, Any] = {k: payload[k] for k in ("change", "grant_id", "terms", "before") if k in payload}
    approval, _ = approvals.request(
        session,
        context=context,
        kind=ApprovalKind.grant,
        tenant_id=tenant_id,
        idempotency_key=f"grant:{uuid.uuid4().hex}",
        request_hash=hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).digest(),
        payload=payload | {"eligible_accounts": eligible},
        total_amount=min(amount * eligible, _BIGINT_MAX),
        row_count=eligible,
        reason=reason,
        policy=policy,
        summary=summary,
        held_because=held_because,
    )
    return Held(approval=approval, replayed=False)


# --- reading ---------------------------------------------------------------------------------------------


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


# --- changing --------------------------------------------------------------------------------------------


def _checked_changes(grant: CreditGrant, data: GrantUpdate, ceiling: int) -> dict[str, Any]:
    """The fields the change sets, refused where a grant cannot take them."""
    changes = data.model_dump(exclude_unset=True)
    for field in ("name", "amount", "priority", "enabled", "starts_at"):
        if field in changes and changes[field] is None:
            raise InvalidGrant(f"{field} cannot be null")
    if changes.get("label") is not None and grant.scope == GrantScope.plan:
        raise InvalidGrant("a plan grant has no label (it is for every user on the plan)")
    if "amount" in changes:
        _check_amount(changes["amount"], ceiling)
    proposed = _values(grant) | changes
    if proposed["ends_at"] is not None and proposed["ends_at"] <= proposed["starts_at"]:
        raise InvalidGrant("ends_at must be after starts_at")
    return changes


def submit_update(
    session: Session,
    *,
    context: RequestContext,
    grant: CreditGrant,
    data: GrantUpdate,
    ceiling: int,
    policy: approvals.Policy,
) -> CreditGrant | Held:
    """Change a grant, or hold the change for a second operator (`Held`) when it lets the grant mint more
    (`widens`) and the grant is platform-funded, or pool-funded and the policy would hold its period. Until then
    the grant runs on its current terms. A change that mints no more applies at once."""
    _ensure_may_issue(context.principal, scope=grant.scope, funding=grant.funding)
    changes = _checked_changes(grant, data, ceiling)
    current = _values(grant)
    proposed = current | changes
    if not widens(current, proposed):
        return apply_changes(session, context=context, grant=grant, changes=changes)
    eligible = issuing.eligible_accounts(
        session, scope=grant.scope, plan=grant.plan, tenant_id=grant.tenant_id, label=proposed["label"]
    )
    held_because = _hold_reason(policy, funding=grant.funding, amount=proposed["amount"], eligible=eligible)
    if held_because is None:
        return apply_changes(session, context=context, grant=grant, changes=changes)
    return _hold(
        session,
        context=context,
        policy=policy,
        tenant_id=grant.tenant_id,
        payload={
            "change": "update",
            "grant_id": grant.id,
            "changes": data.model_dump(mode="json", exclude_unset=True),
            "before": _as_json(current),
            "terms": _as_json(proposed),
        },
        eligible=eligible,
        held_because=held_because,
        reason=f"change to grant {grant.id} '{grant.name}': " + ", ".join(sorted(changes)),
    )


def minting_terms(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """A grant's `MINTING_TERMS` from its values or their JSON snapshot, comparable either way."""
    return tuple(
        datetime.fromisoformat(value) if field.endswith("_at") and isinstance(value, str) else value
        for field, value in ((field, values[field]) for field in MINTING_TERMS)
    )


def lock(session: Session, *, grant_id: int) -> CreditGrant:
    """The grant as the database has it now, locked until the transaction ends (a change applied from an
    approval waits here for another change in flight)."""
    grant = session.scalars(
        select(CreditGrant)
        .where(CreditGrant.id == grant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if grant is None:
        raise GrantNotFound(f"grant {grant_id} not found")
    return grant


def apply_changes(
    session: Session,
    *,
    context: RequestContext,
    grant: CreditGrant,
    changes: Mapping[str, Any],
    approval: RechargeApproval | None = None,
) -> CreditGrant:
    """Set checked changes (and the approval they come from, in the same write: the database checks it there)."""
    before = snapshot(grant)
    for field, value in changes.items():
        setattr(grant, field, value)
    if approval is not None:
        grant.approval_id = approval.id
    session.flush()
    after = snapshot(grant)
    if after != before or approval is not None:
        audit.record(
            session,
            context=context,
            action="grant.update",
            target_type="credit_grant",
            target_id=grant.id,
            tenant_id=grant.tenant_id,
            before=before,
            after=after | approved_from(approval),
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
