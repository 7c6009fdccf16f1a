"""Recharge flows: who may credit whom from which source, then billing moves the tokens.

Platform admins and operators create tokens (from the issuance account); a tenant admin hands out tokens
from its tenant's pool and never more than the pool holds."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.errors import InsufficientTokens
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from billing.recharge import service as batches
from facemint.audit import service as audit
from facemint.auth.principal import Principal
from facemint.deps import RequestContext
from facemint.errors import Forbidden
from facemint.recharges.errors import BatchRejected, RecipientFrozen, RecipientTenantSuspended
from facemint.recharges.parsing import ParsedBatch, RowFailure
from facemint.recharges.schemas import RechargeCreate
from facemint.tenants.errors import TenantNotFound
from facemint.tenants.orm import Tenant
from facemint.users.errors import UserNotFound
from facemint.users.orm import User


@dataclass(frozen=True, slots=True)
class Source:
    account_id: int
    tracked: bool
    tenant_id: int | None


def _key_scope(principal: Principal) -> str:
    # Idempotency keys are the caller's namespace: two tenants can both send "2026-11-batch-1".
    return "platform" if principal.is_staff else f"tenant:{principal.tenant_id}"


def source_for(session: Session, principal: Principal) -> Source:
    if principal.is_staff:
        return Source(
            account_id=ledger.system_account_id(session, kind=AccountKind.issuance),
            tracked=False,
            tenant_id=None,
        )
    assert principal.tenant_id is not None
    tenant = session.get(Tenant, principal.tenant_id)
    assert tenant is not None
    return Source(account_id=tenant.pool_account_id, tracked=True, tenant_id=tenant.id)


# --- one recharge ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RechargeOutcome:
    transaction_id: int
    amount: int
    replayed: bool
    target: dict[str, Any]
    balance: int
    held: int


def recharge_one(
    session: Session, *, context: RequestContext, data: RechargeCreate, idempotency_key: str
) -> RechargeOutcome:
    principal = context.principal
    target_tenant_id: int | None
    if data.tenant_id is not None:
        # Filling a tenant's pool creates tokens: platform staff only.
        if not principal.is_staff:
            raise Forbidden("only platform admins and operators fill tenant pools")
        tenant = session.get(Tenant, data.tenant_id)
        if tenant is None:
            raise TenantNotFound(f"tenant {data.tenant_id} not found")
        target_account, target_tenant_id = tenant.pool_account_id, tenant.id
        target: dict[str, Any] = {"tenant_id": tenant.id, "account": "pool"}
    else:
        user = _find_user(session, principal=principal, user_id=data.user_id, email=data.email)
        target_account, target_tenant_id = user.account_id, user.tenant_id
        target = {"user_id": user.id, "email": user.email}
    source = source_for(session, principal)
    body = data.model_dump(mode="json")
    key = f"recharge:{_key_scope(principal)}:{idempotency_key}"
    request_hash = ledger.request_hash(body)
    # A replay answers with the first result even if the recipient was frozen since.
    posting = ledger.find_posting(session, idempotency_key=key, request_hash=request_hash)
    if posting is None:
        if data.tenant_id is None:
            _ensure_recipient_open(session, user)
        posting = ledger.transfer(
            session,
            kind=TransactionKind.recharge,
            from_account_id=source.account_id,
            to_account_id=target_account,
            amount=data.amount,
            idempotency_key=key,
            request_hash=request_hash,
            tenant_id=target_tenant_id,
            actor=principal.label,
            reason=data.reason,
            reference=data.reference,
        )
    if not posting.replayed:
        audit.record(
            session,
            context=context,
            action="recharge.create",
            target_type="ledger_transaction",
            target_id=posting.transaction_id,
            tenant_id=target_tenant_id,
            after={**body, "transaction_id": posting.transaction_id, "source_account_id": source.account_id},
        )
    balance = ledger.get_balance(session, account_id=target_account)
    return RechargeOutcome(
        transaction_id=posting.transaction_id,
        amount=posting.amount,
        replayed=posting.replayed,
        target=target,
        balance=balance.balance,
        held=balance.held,
    )


def _ensure_recipient_open(session: Session, user: User) -> None:
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
    if user is None or (principal.tenant_scope is not None and user.tenant_id != principal.tenant_scope):
        raise UserNotFound("user not found")
    return user


# --- batches -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchRequest:
    mode: str
    dry_run: bool
    reason: str
    tenant_id: int | None
    idempotency_key: str
    content_kind: str
    body: bytes


def batch_request_hash(request: BatchRequest) -> bytes:
    digest = hashlib.sha256()
    for part in (request.mode, str(request.tenant_id), request.reason, request.content_kind):
        digest.update(part.encode())
        digest.update(b"\x00")
    digest.update(request.body)
    return digest.digest()


_FAILURE_DETAILS = {
    "unknown_user": "no such user",
    "user_of_other_tenant": "the user belongs to another tenant",
    "user_frozen": "the user is frozen",
    "tenant_suspended": "the user's tenant is suspended",
    "duplicate_user": "this user already appears on an earlier row",
}


def run_batch(
    session: Session, *, context: RequestContext, request: BatchRequest, parsed: ParsedBatch
) -> tuple[dict[str, Any], bool]:
    """Validate, price and (unless dry run) apply a batch. Returns (result, created)."""
    principal = context.principal
    request_hash = batch_request_hash(request)
    stored_key = f"batch:{_key_scope(principal)}:{request.idempotency_key}"
    if not request.dry_run:
        stored = batches.find_batch(session, idempotency_key=stored_key, request_hash=request_hash)
        if stored is not None:
            return stored.result, False

    scope_tenant = principal.tenant_scope if principal.tenant_scope is not None else request.tenant_id
    if request.tenant_id is not None and principal.tenant_scope not in (None, request.tenant_id):
        raise TenantNotFound(f"tenant {request.tenant_id} not found")
    source = source_for(session, principal)
    batch_tenant = source.tenant_id if source.tracked else scope_tenant
    failures = parsed.failures + _resolve_rows(
        session, parsed=parsed, scope_tenant=scope_tenant, hide_other_tenants=not principal.is_staff
    )
    failures.sort(key=lambda f: f.row)
    batches.create_stage(session)
    session.execute(
        text(
            f"INSERT INTO {batches.STAGE_TABLE} (row_no, account_id, amount, reference) "
            "SELECT row_no, account_id, amount, reference FROM recharge_resolved WHERE failure IS NULL"
        )
    )
    applied, total = batches.stage_totals(session)
    result: dict[str, Any] = {
        "batch_id": None,
        "mode": request.mode,
        "dry_run": request.dry_run,
        "rows": parsed.row_count,
        "applied": applied,
        "total_amount": total,
        "failed": [f.as_dict() for f in failures],
    }
    if failures and request.mode == "atomic":
        raise BatchRejected(
            f"{len(failures)} of {parsed.row_count} rows failed; nothing was applied",
            **{**result, "applied": 0, "total_amount": 0},
        )
    if source.tracked:
        pool = ledger.get_balance(session, account_id=source.account_id)
        if total > pool.available:
            # The pool may be empty because a duplicate of this very request just committed: replay it, do not
            # refuse it (refusing would invite a retry under a new key, and paying twice).
            stored = None
            if not request.dry_run:
                stored = batches.find_batch(session, idempotency_key=stored_key, request_hash=request_hash)
            if stored is not None:
                return stored.result, False
            raise InsufficientTokens(
                f"the pool holds {pool.available} tokens; this batch needs {total}",
                needed=total,
                available=pool.available,
            )
    if request.dry_run:
        return result, False
    # Claimed only now, so the claim's foreign-key lock on the pool is not held while rows are resolved. A
    # concurrent duplicate waits here on the key and then replays.
    claimed = batches.begin_batch(
        session,
        idempotency_key=stored_key,
        request_hash=request_hash,
        mode=request.mode,
        tenant_id=batch_tenant,
        actor=principal.label,
        reason=request.reason,
        source_account_id=source.account_id,
        row_count=parsed.row_count,
    )
    if isinstance(claimed, batches.StoredBatch):
        return claimed.result, False
    applied_batch = batches.apply_staged(
        session,
        batch_id=claimed,
        request_hash=request_hash,
        tenant_id=batch_tenant,
        actor=principal.label,
        reason=request.reason,
        source_account_id=source.account_id,
        source_tracked=source.tracked,
    )
    result.update(
        batch_id=claimed,
        transaction_id=applied_batch.transaction_id,
        applied=applied_batch.applied,
        total_amount=applied_batch.total_amount,
    )
    batches.finish_batch(
        session,
        batch_id=claimed,
        applied=applied_batch.applied,
        failed=len(failures),
        total_amount=applied_batch.total_amount,
        result=result,
    )
    audit.record(
        session,
        context=context,
        action="recharge.batch",
        target_type="recharge_batch",
        target_id=claimed,
        tenant_id=batch_tenant,
        after={
            "mode": request.mode,
            "reason": request.reason,
            "rows": parsed.row_count,
            "applied": applied_batch.applied,
            "failed": len(failures),
            "total_amount": applied_batch.total_amount,
            "transaction_id": applied_batch.transaction_id,
            "source_account_id": source.account_id,
        },
    )
    return result, True


def _copy_rows(session: Session, parsed: ParsedBatch) -> None:
    """Load the parsed rows with COPY: one round trip for 100,000 rows."""
    session.execute(
        text(
            "CREATE TEMP TABLE recharge_input (row_no integer, user_id bigint, email text, amount bigint, "
            "reference text) ON COMMIT DROP"
        )
    )
    # CSV format: an unquoted empty field is NULL. Parsing turned blank emails and references into None, so no
    # empty string reaches COPY, and csv quotes whatever needs quoting (commas, quotes, newlines, tabs).
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(
        zip(parsed.row_nos, parsed.user_ids, parsed.emails, parsed.amounts, parsed.references, strict=True)
    )
    buffer.seek(0)
    cursor = session.connection().connection.cursor()
    try:
        cursor.copy_expert(
            "COPY recharge_input (row_no, user_id, email, amount, reference) FROM STDIN WITH (FORMAT csv)", buffer
        )
    finally:
        cursor.close()
    # A fresh temp table has no statistics: without them 100,000 rows are planned as a handful, and the joins
    # and sorts below spill to disk.
    session.execute(text("ANALYZE recharge_input"))
    session.execute(text("SET LOCAL work_mem = '64MB'"))


def _resolve_rows(
    session: Session, *, parsed: ParsedBatch, scope_tenant: int | None, hide_other_tenants: bool
) -> list[RowFailure]:
    """Match rows to users in one set-based pass and return the rows that cannot be applied.

    A tenant admin is told `unknown_user` for another tenant's user, so a batch cannot probe other tenants."""
    _copy_rows(session, parsed)
    session.execute(
        text(
            """
            CREATE TEMP TABLE recharge_resolved ON COMMIT DROP AS
            WITH matched AS (
                SELECT i.row_no, u.id, u.tenant_id, u.status, u.account_id
                FROM recharge_input i JOIN users u ON u.id = i.user_id
                UNION ALL
                SELECT i.row_no, u.id, u.tenant_id, u.status, u.account_id
                FROM recharge_input i JOIN users u ON u.email = i.email
                WHERE i.user_id IS NULL
            ),
            rows AS (
                SELECT i.row_no, i.amount, i.reference, i.email, i.user_id AS given_user_id,
                       m.id AS user_id, m.tenant_id, m.status AS user_status, m.account_id,
                       t.status AS tenant_status,
                       row_number() OVER (PARTITION BY m.id ORDER BY i.row_no) AS occurrence
                FROM recharge_input i
                LEFT JOIN matched m ON m.row_no = i.row_no
                LEFT JOIN tenants t ON t.id = m.tenant_id
            )
            SELECT row_no, amount, reference, email, given_user_id, user_id, account_id,
                   CASE
                       WHEN user_id IS NULL THEN 'unknown_user'
                       WHEN CAST(:scope_tenant AS bigint) IS NOT NULL
                            AND tenant_id IS DISTINCT FROM CAST(:scope_tenant AS bigint)
                           THEN CASE WHEN :hide THEN 'unknown_user' ELSE 'user_of_other_tenant' END
                       WHEN user_status <> 'active' THEN 'user_frozen'
                       WHEN tenant_status = 'suspended' THEN 'tenant_suspended'
                       WHEN occurrence > 1 THEN 'duplicate_user'
                   END AS failure
            FROM rows
            """
        ),
        {"scope_tenant": scope_tenant, "hide": hide_other_tenants},
    )
    rows = session.execute(
        text(
            "SELECT row_no, failure, email, given_user_id FROM recharge_resolved "
            "WHERE failure IS NOT NULL ORDER BY row_no"
        )
    )
    return [
        RowFailure(r.row_no, r.failure, _FAILURE_DETAILS[r.failure], email=r.email, user_id=r.given_user_id)
        for r in rows
    ]
