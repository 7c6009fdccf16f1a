"""Balances for admins, and operator corrections: adjustments and reversals (new entries, never edits)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import InvalidAmount
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from billing.ledger.schemas import Posting
from facemint.audit import service as audit
from facemint.balances.schemas import AccountBalanceRead, AdjustmentCreate, ReversalCreate
from facemint.context import RequestContext
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant
from facemint.users import service as user_service
from facemint.users.orm import User


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
    return [
        AccountBalanceRead(
            account_id=u.account_id,
            kind=AccountKind.user.value,
            user_id=u.id,
            email=u.email,
            tenant_id=u.tenant_id,
            balance=balances[u.account_id].balance,
            held=balances[u.account_id].held,
            available=balances[u.account_id].available,
        )
        for u in users
    ]


def adjust(session: Session, *, context: RequestContext, data: AdjustmentCreate, idempotency_key: str) -> Posting:
    if data.amount == 0:
        raise InvalidAmount("an adjustment moves a non-zero number of tokens")
    user = user_service.get(session, user_id=data.user_id, tenant_scope=context.principal.tenant_scope)
    adjustments = ledger.system_account_id(session, kind=AccountKind.adjustments)
    posting = ledger.post(
        session,
        kind=TransactionKind.adjustment,
        legs=[(user.account_id, data.amount), (adjustments, -data.amount)],
        idempotency_key=f"adjustment:{idempotency_key}",
        request_hash=ledger.request_hash(data.model_dump(mode="json")),
        tenant_id=user.tenant_id,
        actor=context.principal.label,
        reason=data.reason,
    )
    if not posting.replayed:
        audit.record(
            session,
            context=context,
            action="ledger.adjust",
            target_type="ledger_transaction",
            target_id=posting.transaction_id,
            tenant_id=user.tenant_id,
            after={**data.model_dump(mode="json"), "transaction_id": posting.transaction_id},
        )
    return posting


def reverse(
    session: Session,
    *,
    context: RequestContext,
    transaction_id: int,
    data: ReversalCreate,
    idempotency_key: str,
) -> Posting:
    posting = ledger.reverse(
        session,
        transaction_id=transaction_id,
        idempotency_key=f"reversal:{idempotency_key}",
        request_hash=ledger.request_hash({"transaction_id": transaction_id, **data.model_dump(mode="json")}),
        actor=context.principal.label,
        reason=data.reason,
        tenant_id=context.principal.tenant_scope,
    )
    if not posting.replayed:
        audit.record(
            session,
            context=context,
            action="ledger.reverse",
            target_type="ledger_transaction",
            target_id=posting.transaction_id,
            # The reversal belongs to the original's tenant (the ledger copies it), not the caller's.
            tenant_id=posting.tenant_id,
            after={"reverses_transaction_id": transaction_id, "reason": data.reason},
        )
    return posting
