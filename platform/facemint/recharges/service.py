"""One recharge: who may credit whom, then billing moves the tokens. A recharge the approval policy holds (its
amount, or the requester's 24-hour total) is not applied: it waits (facemint.approvals) until a second operator
approves it (`facemint.approvals.approving.approve`), then is applied exactly once (`approving`). Batches are
`batch`; where the tokens come from, `origin`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from billing.ledger import lots as ledger_lots
from billing.ledger import service as ledger
from billing.ledger.orm import TransactionKind
from billing.ledger.schemas import Lot, LotTerms, Posting
from facemint import tenancy
from facemint.approvals import service as approvals
from facemint.approvals.orm import ApprovalKind, ApprovalStatus, RechargeApproval
from facemint.approvals.service import Held, approval_key, approved_from
from facemint.audit import service as audit
from facemint.auth.principal import Principal
from facemint.balance_alerts import evaluation as balance_alerts
from facemint.context import RequestContext
from facemint.errors import Forbidden
from facemint.recharges.errors import AmountAboveCeiling, RecipientFrozen, RecipientTenantSuspended
from facemint.recharges.origin import Origin, ensure_pool_covers, key_scope, source_for
from facemint.recharges.schemas import RechargeCreate
from facemint.tenants.errors import TenantNotFound
from facemint.tenants.orm import Tenant
from facemint.users.errors import UserNotFound
from facemint.users.orm import User


@dataclass(frozen=True, slots=True)
class RechargeOutcome:
    transaction_id: int
    amount: int
    replayed: bool
    target: dict[str, Any]
    balance: int
    held: int
    lots: list[Lot] = field(default_factory=list)  # the lots the recharge credited


@dataclass(frozen=True, slots=True)
class _Target:
    account_id: int
    tenant_id: int | None
    view: dict[str, Any]
    user: User | None  # None for a tenant's pool


def recharge_one(
    session: Session, *, context: RequestContext, data: RechargeCreate, idempotency_key: str
) -> RechargeOutcome:
    """Apply one recharge now, whatever its amount: for in-process callers (the demo seed), never for the API."""
    outcome = submit_recharge(session, context=context, data=data, idempotency_key=idempotency_key, policy=None)
    assert isinstance(outcome, RechargeOutcome)  # without a policy nothing is held
    return outcome


def submit_recharge(
    session: Session,
    *,
    context: RequestContext,
    data: RechargeCreate,
    idempotency_key: str,
    policy: approvals.Policy | None,
    ceiling: int | None = None,
) -> RechargeOutcome | Held:
    """Apply one recharge, or hold it for approval when `policy` says it needs a second operator (its amount, or
    the requester's 24-hour total). An amount above `ceiling` (FACEMINT_RECHARGE_MAX_AMOUNT) is refused first."""
    if ceiling is not None and data.amount > ceiling:
        raise AmountAboveCeiling(f"amount is above the ceiling of {ceiling} tokens")
    principal = context.principal
    origin = Origin.of(principal)
    target = _resolve_target(session, principal=principal, data=data)
    body = data.hashed()
    key = f"recharge:{key_scope(principal)}:{idempotency_key}"
    request_hash = ledger.request_hash(body)
    if policy is not None:
        approvals.serialise_requester(session, user_id=principal.user_id)
    # A replay answers with the first result even if the recipient was frozen since.
    posting = ledger.find_posting(session, idempotency_key=key, request_hash=request_hash)
    if posting is None:
        if policy is not None:
            held = approvals.find_by_key(session, idempotency_key=key, request_hash=request_hash)
            if held is not None:
                return _answer_held_single(session, held)
        if target.user is not None:
            ensure_recipient_open(session, target.user)
        held_because = (
            approvals.hold_reason(session, policy, user_id=principal.user_id, amount=data.amount) if policy else None
        )
        if policy is not None and held_because is not None:
            # Refused now what would be refused on approval, so nobody approves a recharge that cannot apply.
            ensure_pool_covers(session, source_for(session, origin), data.amount)
            approval, created = approvals.request(
                session,
                context=context,
                kind=ApprovalKind.single,
                tenant_id=target.tenant_id,
                idempotency_key=key,
                request_hash=request_hash,
                payload={
                    "origin": origin.as_dict(),
                    "body": body,
                    "target": target.view,
                    "target_account_id": target.account_id,
                    "target_tenant_id": target.tenant_id,
                },
                total_amount=data.amount,
                row_count=1,
                reason=data.reason,
                policy=policy,
                summary={"body": body, "target": target.view},
                held_because=held_because,
            )
            return Held(approval=approval, replayed=not created)
        posting = credit(
            session,
            context=context,
            origin=origin,
            body=body,
            target_account_id=target.account_id,
            target_tenant_id=target.tenant_id,
            idempotency_key=key,
            request_hash=request_hash,
        )
    balance = ledger.get_balance(session, account_id=target.account_id)
    return RechargeOutcome(
        transaction_id=posting.transaction_id,
        amount=posting.amount,
        replayed=posting.replayed,
        target=target.view,
        balance=balance.balance,
        held=balance.held,
        lots=ledger_lots.lots_of_transaction(session, transaction_id=posting.transaction_id),
    )


def _resolve_target(session: Session, *, principal: Principal, data: RechargeCreate) -> _Target:
    if data.tenant_id is not None:
        # Filling a tenant's pool creates tokens: platform staff only.
        if not principal.is_staff:
            raise Forbidden("only platform admins and operators fill tenant pools")
        tenant = session.get(Tenant, data.tenant_id)
        if tenant is None:
            raise TenantNotFound(f"tenant {data.tenant_id} not found")
        return _Target(tenant.pool_account_id, tenant.id, {"tenant_id": tenant.id, "account": "pool"}, None)
    user = _find_user(session, principal=principal, user_id=data.user_id, email=data.email)
    return _Target(user.account_id, user.tenant_id, {"user_id": user.id, "email": user.email}, user)


def credit(
    session: Session,
    *,
    context: RequestContext,
    origin: Origin,
    body: dict[str, Any],
    target_account_id: int,
    target_tenant_id: int | None,
    idempotency_key: str,
    request_hash: bytes,
    approval: RechargeApproval | None = None,
) -> Posting:
    source = source_for(session, origin)
    # Validated when requested; an approval applied after its expiry has passed is refused (422) and stays pending.
    posting = ledger.transfer(
        session,
        kind=TransactionKind.recharge,
        from_account_id=source.account_id,
        to_account_id=target_account_id,
        amount=body["amount"],
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        tenant_id=target_tenant_id,
        actor=origin.label,
        reason=body["reason"],
        reference=body.get("reference"),
        lot_terms=lot_terms(body),
    )
    if not posting.replayed:
        # The recipient rose (may re-arm), a tenant admin's pool fell (may fire).
        balance_alerts.evaluate_transaction(session, transaction_id=posting.transaction_id)
        audit.record(
            session,
            context=context,
            action="recharge.create",
            target_type="ledger_transaction",
            target_id=posting.transaction_id,
            tenant_id=target_tenant_id,
            after={
                **body,
                "transaction_id": posting.transaction_id,
                "source_account_id": source.account_id,
                **approved_from(approval),
            },
        )
    return posting


def _answer_held_single(session: Session, approval: RechargeApproval) -> RechargeOutcome | Held:
    """A replay of a held recharge: the approval until it is approved, then the applied recharge."""
    if approval.status != ApprovalStatus.approved:
        return Held(approval=approval, replayed=True)
    posting = ledger.find_posting(
        session, idempotency_key=approval_key(approval.id), request_hash=bytes(approval.request_hash)
    )
    assert posting is not None  # approving posts in the same transaction that marks it approved
    balance = ledger.get_balance(session, account_id=approval.payload["target_account_id"])
    return RechargeOutcome(
        transaction_id=posting.transaction_id,
        amount=posting.amount,
        replayed=True,
        target=approval.payload["target"],
        balance=balance.balance,
        held=balance.held,
        lots=ledger_lots.lots_of_transaction(session, transaction_id=posting.transaction_id),
    )


def lot_terms(body: dict[str, Any]) -> LotTerms:
    """The lot terms a recharge's stored body asks for (its JSON form: an approval's payload keeps it so)."""
    expires_at = body.get("expires_at")
    return LotTerms(
        priority=body.get("priority"), expires_at=datetime.fromisoformat(expires_at) if expires_at else None
    )


def ensure_recipient_open(session: Session, user: User) -> None:
    if user.status != "active":
        raise RecipientFrozen(f"user {user.id} is frozen")
    # As in a batch (`tenant_suspended` row failure): a suspended tenant's users are not credited.
    user_tenant = session.get(Tenant, user.tenant_id) if user.tenant_id is not None else None
    if user_tenant is not None and user_tenant.status == "suspended":
        raise RecipientTenantSuspended(f"tenant {user_tenant.id} is suspended")


def _find_user(session: Session, *, principal: Principal, user_id: int | None, email: str | None) -> User:
    if user_id is not None:
        user = session.get(User, user_id)
    else:
        user = session.query(User).filter(User.email == (email or "").strip().lower()).one_or_none()
    if user is None or not tenancy.is_visible(principal.tenant_scope, user.tenant_id):
        raise UserNotFound("user not found")
    return user
