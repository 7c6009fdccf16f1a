"""Balances for admins, and operator corrections: adjustments and reversals (new entries, never edits), held
for a second operator like large recharges."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import AlreadyReversed, InsufficientTokens, InvalidAmount, NotReversible, TransactionNotFound
from billing.ledger import lots as ledger_lots
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, LedgerTransaction, TransactionKind
from billing.ledger.schemas import Balance, Lot, NextExpiry, Posting
from facemint import tenancy
from facemint.approvals import service as approvals
from facemint.approvals.orm import ApprovalKind, ApprovalStatus, RechargeApproval
from facemint.approvals.service import Held
from facemint.audit import service as audit
from facemint.balance_alerts import evaluation as balance_alerts
from facemint.balances.schemas import (
    AccountBalanceRead,
    AdjustmentCreate,
    BalanceRead,
    LotRead,
    NextExpiryRead,
    ReversalCreate,
)
from facemint.context import RequestContext
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant
from facemint.users import service as user_service
from facemint.users.orm import User

# How many of an account's lots a balance shows (in the order they are spent); its totals cover them all.
LOTS_SHOWN = 50


def lot_read(lot: Lot) -> LotRead:
    return LotRead(
        id=lot.lot_id,
        source=lot.source,
        priority=lot.priority,
        effective_at=lot.effective_at,
        expires_at=lot.expires_at,
        amount=lot.amount,
        remaining=lot.remaining,
        held=lot.held,
    )


def _next_expiry(expiry: NextExpiry | None) -> NextExpiryRead | None:
    return None if expiry is None else NextExpiryRead(expires_at=expiry.expires_at, amount=expiry.amount)


def balance_read(session: Session, *, account_id: int) -> BalanceRead:
    """An account's balance with its lots (the first LOTS_SHOWN in burn order) and next expiry."""
    balance = ledger.get_balance(session, account_id=account_id)
    return BalanceRead(**_with_lots(session, [balance])[account_id])


def _with_lots(session: Session, balances: list[Balance]) -> dict[int, dict[str, Any]]:
    """Each balance's fields for a BalanceRead, lots and next expiry included, read set-based for all of them."""
    ids = [b.account_id for b in balances]
    lots = ledger_lots.account_lots(session, account_ids=ids, limit=LOTS_SHOWN)
    expiries = ledger_lots.next_expiries(session, account_ids=ids)
    return {
        b.account_id: {
            "balance": b.balance,
            "held": b.held,
            "available": b.available,
            "lots": [lot_read(lot) for lot in lots.get(b.account_id, [])],
            "next_expiry": _next_expiry(expiries.get(b.account_id)),
        }
        for b in balances
    }


def pool_balance(session: Session, *, account_id: int, tenant_id: int) -> AccountBalanceRead:
    balance = ledger.get_balance(session, account_id=account_id)
    return AccountBalanceRead(
        account_id=account_id,
        kind=AccountKind.tenant_pool.value,
        tenant_id=tenant_id,
        **_with_lots(session, [balance])[account_id],
    )


def list_user_balances(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    user_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[AccountBalanceRead]:
    query = within_tenant(
        select(User.id, User.email, User.tenant_id, User.account_id),
        User.tenant_id,
        tenant_scope=tenant_scope,
        tenant_id=tenant_id,
    )
    if user_id is not None:
        query = query.where(User.id == user_id)
    query = newest_first(query, User.id, before_id=before_id, limit=limit)
    users = session.execute(query).all()
    balances = ledger.get_balances(session, account_ids=[u.account_id for u in users])
    fields = _with_lots(session, list(balances.values()))
    return [
        AccountBalanceRead(
            account_id=u.account_id,
            kind=AccountKind.user.value,
            user_id=u.id,
            email=u.email,
            tenant_id=u.tenant_id,
            **fields[u.account_id],
        )
        for u in users
    ]


# --- adjustments and reversals ------------------------------------------------------------------------------
# Both mint or move tokens, so both go through four eyes like recharges: a request the approval policy holds (its
# amount, or the requester's 24-hour total) waits for a second operator (`facemint.approvals.approving.approve`,
# which applies it here, exactly once, under the key `approval:<id>`).


def adjust(
    session: Session,
    *,
    context: RequestContext,
    data: AdjustmentCreate,
    idempotency_key: str,
    policy: approvals.Policy | None = None,
) -> Posting | Held:
    """Credit (positive) or debit (negative) a user against the adjustments account, or hold the adjustment for
    approval when `policy` says its magnitude or the requester's 24-hour total needs a second operator. The same
    key replays the posting, or the approval until it is approved and then the posting it applied."""
    if data.amount == 0:
        raise InvalidAmount("an adjustment moves a non-zero number of tokens")
    principal = context.principal
    user = user_service.get(session, user_id=data.user_id, tenant_scope=principal.tenant_scope)
    body = data.model_dump(mode="json")
    key = f"adjustment:{idempotency_key}"
    request_hash = ledger.request_hash(body)
    if policy is not None:
        approvals.serialise_requester(session, user_id=principal.user_id)
        replayed = _replay(session, idempotency_key=key, request_hash=request_hash)
        if replayed is not None:
            return replayed
        held_because = approvals.hold_reason(session, policy, user_id=principal.user_id, amount=abs(data.amount))
        if held_because is not None:
            if data.amount < 0:
                # Refused now what would be refused on approval, so nobody approves a debit that cannot apply.
                available = ledger.get_balance(session, account_id=user.account_id).available
                if -data.amount > available:
                    raise InsufficientTokens(
                        f"not enough tokens: {-data.amount} needed, {available} available",
                        needed=-data.amount,
                        available=available,
                    )
            target = {"user_id": user.id, "email": user.email}
            approval, created = approvals.request(
                session,
                context=context,
                kind=ApprovalKind.adjustment,
                tenant_id=user.tenant_id,
                idempotency_key=key,
                request_hash=request_hash,
                payload={
                    "body": body,
                    "target": target,
                    "account_id": user.account_id,
                    "tenant_id": user.tenant_id,
                    "actor": principal.label,
                },
                total_amount=abs(data.amount),
                row_count=1,
                reason=data.reason,
                policy=policy,
                summary={"body": body, "target": target},
                held_because=held_because,
            )
            return Held(approval=approval, replayed=not created)
    return _post_adjustment(
        session,
        context=context,
        body=body,
        account_id=user.account_id,
        tenant_id=user.tenant_id,
        actor=principal.label,
        idempotency_key=key,
        request_hash=request_hash,
    )


def apply_approved_adjustment(
    session: Session, *, context: RequestContext, approval: RechargeApproval
) -> approvals.Applied:
    """Post a held adjustment as its requester asked (their actor label; the approver's audit context)."""
    payload = approval.payload
    posting = _post_adjustment(
        session,
        context=context,
        body=payload["body"],
        account_id=payload["account_id"],
        tenant_id=payload["tenant_id"],
        actor=payload["actor"],
        idempotency_key=approvals.approval_key(approval.id),
        request_hash=bytes(approval.request_hash),
        approval=approval,
    )
    result = {
        "approval_id": approval.id,
        "transaction_id": posting.transaction_id,
        "amount": payload["body"]["amount"],
        "target": payload["target"],
    }
    return approvals.Applied(result, transaction_id=posting.transaction_id)


def _post_adjustment(
    session: Session,
    *,
    context: RequestContext,
    body: dict[str, Any],
    account_id: int,
    tenant_id: int | None,
    actor: str,
    idempotency_key: str,
    request_hash: bytes,
    approval: RechargeApproval | None = None,
) -> Posting:
    adjustments = ledger.system_account_id(session, kind=AccountKind.adjustments)
    posting = ledger.post(
        session,
        kind=TransactionKind.adjustment,
        legs=[(account_id, body["amount"]), (adjustments, -body["amount"])],
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        tenant_id=tenant_id,
        actor=actor,
        reason=body["reason"],
    )
    if not posting.replayed:
        balance_alerts.evaluate_transaction(session, transaction_id=posting.transaction_id)
        audit.record(
            session,
            context=context,
            action="ledger.adjust",
            target_type="ledger_transaction",
            target_id=posting.transaction_id,
            tenant_id=tenant_id,
            after={**body, "transaction_id": posting.transaction_id, **approvals.approved_from(approval)},
        )
    return posting


def reverse(
    session: Session,
    *,
    context: RequestContext,
    transaction_id: int,
    data: ReversalCreate,
    idempotency_key: str,
    policy: approvals.Policy | None = None,
) -> Posting | Held:
    """Post the exact opposite of a transaction, or hold the reversal for approval when `policy` says the amount
    it moves back (the original's) or the requester's 24-hour total needs a second operator. Replays as `adjust`."""
    principal = context.principal
    body = {"transaction_id": transaction_id, **data.model_dump(mode="json")}
    key = f"reversal:{idempotency_key}"
    request_hash = ledger.request_hash(body)
    if policy is not None:
        approvals.serialise_requester(session, user_id=principal.user_id)
        replayed = _replay(session, idempotency_key=key, request_hash=request_hash)
        if replayed is not None:
            return replayed
        # Refused now what would be refused on approval: an unknown, already reversed or unreversible original.
        original = _reversible(session, transaction_id=transaction_id, tenant_scope=principal.tenant_scope)
        held_because = approvals.hold_reason(session, policy, user_id=principal.user_id, amount=original.amount)
        if held_because is not None:
            approval, created = approvals.request(
                session,
                context=context,
                kind=ApprovalKind.reversal,
                tenant_id=original.tenant_id,
                idempotency_key=key,
                request_hash=request_hash,
                payload={
                    "body": body,
                    "original": {
                        "transaction_id": original.id,
                        "kind": original.kind,
                        "amount": original.amount,
                        "tenant_id": original.tenant_id,
                    },
                    "tenant_scope": principal.tenant_scope,
                    "actor": principal.label,
                },
                total_amount=original.amount,
                row_count=1,
                reason=data.reason,
                policy=policy,
                summary={"body": body, "amount": original.amount},
                held_because=held_because,
            )
            return Held(approval=approval, replayed=not created)
    return _post_reversal(
        session,
        context=context,
        body=body,
        tenant_scope=principal.tenant_scope,
        actor=principal.label,
        idempotency_key=key,
        request_hash=request_hash,
    )


def apply_approved_reversal(
    session: Session, *, context: RequestContext, approval: RechargeApproval
) -> approvals.Applied:
    """Post a held reversal as its requester asked (within their tenant scope, under their actor label)."""
    payload = approval.payload
    posting = _post_reversal(
        session,
        context=context,
        body=payload["body"],
        tenant_scope=payload["tenant_scope"],
        actor=payload["actor"],
        idempotency_key=approvals.approval_key(approval.id),
        request_hash=bytes(approval.request_hash),
        approval=approval,
    )
    result = {
        "approval_id": approval.id,
        "transaction_id": posting.transaction_id,
        "amount": posting.amount,
        "reverses_transaction_id": payload["body"]["transaction_id"],
    }
    return approvals.Applied(result, transaction_id=posting.transaction_id)


def _post_reversal(
    session: Session,
    *,
    context: RequestContext,
    body: dict[str, Any],
    tenant_scope: int | None,
    actor: str,
    idempotency_key: str,
    request_hash: bytes,
    approval: RechargeApproval | None = None,
) -> Posting:
    transaction_id = body["transaction_id"]
    posting = ledger.reverse(
        session,
        transaction_id=transaction_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        actor=actor,
        reason=body["reason"],
        tenant_id=tenant_scope,
    )
    if not posting.replayed:
        balance_alerts.evaluate_transaction(session, transaction_id=posting.transaction_id)
        audit.record(
            session,
            context=context,
            action="ledger.reverse",
            target_type="ledger_transaction",
            target_id=posting.transaction_id,
            # The reversal belongs to the original's tenant (the ledger copies it), not the caller's.
            tenant_id=posting.tenant_id,
            after={
                "reverses_transaction_id": transaction_id,
                "reason": body["reason"],
                # What the requester's 24-hour total counts (`approvals.unreviewed_total`).
                "amount": posting.amount,
                **approvals.approved_from(approval),
            },
        )
    return posting


def _replay(session: Session, *, idempotency_key: str, request_hash: bytes) -> Posting | Held | None:
    """What a request under this key already produced: its posting; or, when it was held, the approval until it
    is approved, then the posting approving it made. None: a new request."""
    posting = ledger.find_posting(session, idempotency_key=idempotency_key, request_hash=request_hash)
    if posting is not None:
        return posting
    approval = approvals.find_by_key(session, idempotency_key=idempotency_key, request_hash=request_hash)
    if approval is None:
        return None
    if approval.status != ApprovalStatus.approved:
        return Held(approval=approval, replayed=True)
    applied = ledger.find_posting(
        session, idempotency_key=approvals.approval_key(approval.id), request_hash=bytes(approval.request_hash)
    )
    assert applied is not None  # approving posts in the same transaction that marks it approved
    return applied


def _reversible(session: Session, *, transaction_id: int, tenant_scope: int | None) -> Any:
    """The transaction to reverse (id, kind, amount, tenant_id), refused as `ledger.reverse` would refuse it."""
    original = session.execute(
        select(
            LedgerTransaction.id, LedgerTransaction.kind, LedgerTransaction.amount, LedgerTransaction.tenant_id
        ).where(LedgerTransaction.id == transaction_id)
    ).one_or_none()
    if original is None or not tenancy.is_visible(tenant_scope, original.tenant_id):
        raise TransactionNotFound(f"transaction {transaction_id} not found")
    if original.kind == TransactionKind.reversal:
        raise NotReversible("a reversal cannot be reversed; post an adjustment instead")
    if original.kind == TransactionKind.expiry:
        raise NotReversible("an expiry cannot be reversed; post an adjustment instead")
    reversed_by = session.scalar(
        select(LedgerTransaction.id).where(LedgerTransaction.reverses_transaction_id == transaction_id)
    )
    if reversed_by is not None:
        raise AlreadyReversed(f"transaction {transaction_id} was already reversed")
    return original
