"""Balances for admins, and operator corrections: adjustments and reversals (new entries, never edits)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.errors import InvalidAmount
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from billing.ledger.schemas import Posting
from facemint.audit import service as audit
from facemint.balances.schemas import AccountBalanceRead, AdjustmentCreate, ReversalCreate
from facemint.deps import RequestContext
from facemint.users import service as user_service


def list_user_balances(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    user_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[AccountBalanceRead]:
    rows = session.execute(
        text(
            """
            SELECT a.id AS account_id, a.kind, a.balance, a.held, u.id AS user_id, u.email, u.tenant_id
            FROM users u JOIN ledger_accounts a ON a.id = u.account_id
            WHERE (CAST(:scope AS bigint) IS NULL OR u.tenant_id = :scope)
              AND (CAST(:tenant_id AS bigint) IS NULL OR u.tenant_id = :tenant_id)
              AND (CAST(:user_id AS bigint) IS NULL OR u.id = :user_id)
              AND (CAST(:before_id AS bigint) IS NULL OR u.id < :before_id)
            ORDER BY u.id DESC
            LIMIT :limit
            """
        ),
        {
            "scope": tenant_scope,
            "tenant_id": tenant_id,
            "user_id": user_id,
            "before_id": before_id,
            "limit": limit + 1,
        },
    )
    return [
        AccountBalanceRead(
            account_id=r.account_id,
            kind=r.kind,
            user_id=r.user_id,
            email=r.email,
            tenant_id=r.tenant_id,
            balance=r.balance,
            held=r.held,
            available=r.balance - r.held,
        )
        for r in rows
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
            tenant_id=context.principal.tenant_scope,
            after={"reverses_transaction_id": transaction_id, "reason": data.reason},
        )
    return posting
