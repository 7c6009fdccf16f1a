"""Recharge flows: who may credit whom from which source, then billing moves the tokens.

Platform admins and operators create tokens (from the issuance account); a tenant admin hands out tokens
from its tenant's pool and never more than the pool holds. A recharge above the approval thresholds is not
applied: it is held (facemint.approvals) until a second operator approves it, then applied exactly once."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.errors import InsufficientTokens
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from billing.ledger.schemas import Posting
from billing.recharge import service as batches
from facemint.approvals import service as approvals
from facemint.approvals.errors import SelfApproval
from facemint.approvals.orm import ApprovalKind, ApprovalStatus, RechargeApproval
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


@dataclass(frozen=True, slots=True)
class Origin:
    """Who asked for a recharge: it decides where the tokens come from and which users a batch may reach. An
    approved recharge is applied as its requester asked, not as its approver would have."""

    user_id: int
    api_key_id: int | None
    is_staff: bool
    tenant_id: int | None
    label: str

    @classmethod
    def of(cls, principal: Principal) -> Origin:
        return cls(
            user_id=principal.user_id,
            api_key_id=principal.api_key_id,
            is_staff=principal.is_staff,
            tenant_id=principal.tenant_id,
            label=principal.label,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Origin:
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def tenant_scope(self) -> int | None:
        return None if self.is_staff else self.tenant_id


def _key_scope(principal: Principal | Origin) -> str:
    # Idempotency keys are the caller's namespace: two tenants can both send "2026-11-batch-1".
    return "platform" if principal.is_staff else f"tenant:{principal.tenant_id}"


def _approval_key(approval_id: int) -> str:
    # What applying an approval is idempotent on: a second approval of the same request can never post again.
    return f"approval:{approval_id}"


def source_for(session: Session, principal: Principal | Origin) -> Source:
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


def _ensure_pool_covers(session: Session, source: Source, amount: int) -> None:
    if not source.tracked:
        return
    pool = ledger.get_balance(session, account_id=source.account_id)
    if amount > pool.available:
        raise InsufficientTokens(
            f"the pool holds {pool.available} tokens; this needs {amount}", needed=amount, available=pool.available
        )


@dataclass(frozen=True, slots=True)
class Held:
    """A recharge that was not applied: it waits for approval (or was rejected or expired without being)."""

    approval: RechargeApproval
    replayed: bool


# --- one recharge ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RechargeOutcome:
    transaction_id: int
    amount: int
    replayed: bool
    target: dict[str, Any]
    balance: int
    held: int


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
) -> RechargeOutcome | Held:
    """Apply one recharge, or hold it for approval when `policy` says its amount needs a second operator."""
    principal = context.principal
    origin = Origin.of(principal)
    target = _resolve_target(session, principal=principal, data=data)
    body = data.model_dump(mode="json")
    key = f"recharge:{_key_scope(principal)}:{idempotency_key}"
    request_hash = ledger.request_hash(body)
    # A replay answers with the first result even if the recipient was frozen since.
    posting = ledger.find_posting(session, idempotency_key=key, request_hash=request_hash)
    if posting is None and policy is not None:
        held = approvals.find_by_key(session, idempotency_key=key, request_hash=request_hash)
        if held is not None:
            return _answer_held_single(session, held)
        if policy.single_needs_approval(data.amount):
            # Refused now what would be refused on approval, so nobody approves a recharge that cannot apply.
            if target.user is not None:
                _ensure_recipient_open(session, target.user)
            _ensure_pool_covers(session, source_for(session, origin), data.amount)
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
            )
            return Held(approval=approval, replayed=not created)
    if posting is None:
        if target.user is not None:
            _ensure_recipient_open(session, target.user)
        posting = _credit(
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


def _credit(
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
    )
    if not posting.replayed:
        after = {**body, "transaction_id": posting.transaction_id, "source_account_id": source.account_id}
        if approval is not None:
            after |= {"approval_id": approval.id, "requested_by_user_id": approval.requested_by_user_id}
        audit.record(
            session,
            context=context,
            action="recharge.create",
            target_type="ledger_transaction",
            target_id=posting.transaction_id,
            tenant_id=target_tenant_id,
            after=after,
        )
    return posting


def _answer_held_single(session: Session, approval: RechargeApproval) -> RechargeOutcome | Held:
    """A replay of a held recharge: the approval until it is approved, then the applied recharge."""
    if approval.status != ApprovalStatus.approved:
        return Held(approval=approval, replayed=True)
    posting = ledger.find_posting(
        session, idempotency_key=_approval_key(approval.id), request_hash=bytes(approval.request_hash)
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


# --- approving ---------------------------------------------------------------------------------------


def approve(session: Session, *, context: RequestContext, approval_id: int, note: str | None) -> RechargeApproval:
    """Apply a held recharge, exactly once, and mark it approved in the same transaction.

    The approval row is locked first: a concurrent second approval waits, then finds it decided. If applying
    fails (the recipient was frozen since, an atomic batch now has failing rows, the pool ran dry), the error
    rolls everything back and the approval stays pending, to be rejected or retried."""
    principal = context.principal
    approval = approvals.lock(session, approval_id=approval_id, tenant_scope=principal.tenant_scope)
    if approval.requested_by_user_id == principal.user_id:
        raise SelfApproval("a recharge needs a second person: its requester cannot approve it")
    approval = approvals.ensure_pending(session, approval)
    if approval.kind == ApprovalKind.single:
        result = _apply_approved_single(session, context=context, approval=approval)
        transaction_id, batch_id = result["transaction_id"], None
    else:
        result = _apply_approved_batch(session, context=context, approval=approval)
        transaction_id, batch_id = result.get("transaction_id"), result["batch_id"]
    return approvals.decide(
        session,
        context=context,
        approval=approval,
        status=ApprovalStatus.approved,
        note=note,
        result=result,
        transaction_id=transaction_id,
        batch_id=batch_id,
    )


def _apply_approved_single(session: Session, *, context: RequestContext, approval: RechargeApproval) -> dict[str, Any]:
    payload = approval.payload
    body = payload["body"]
    if body.get("tenant_id") is None:
        # The user resolved when it was requested (an email may belong to someone else by now).
        user = session.get(User, payload["target"]["user_id"])
        if user is None:
            raise UserNotFound("user not found")
        _ensure_recipient_open(session, user)
    posting = _credit(
        session,
        context=context,
        origin=Origin.from_dict(payload["origin"]),
        body=body,
        target_account_id=payload["target_account_id"],
        target_tenant_id=payload["target_tenant_id"],
        idempotency_key=_approval_key(approval.id),
        request_hash=bytes(approval.request_hash),
        approval=approval,
    )
    return {
        "approval_id": approval.id,
        "transaction_id": posting.transaction_id,
        "amount": posting.amount,
        "target": payload["target"],
    }


def _apply_approved_batch(session: Session, *, context: RequestContext, approval: RechargeApproval) -> dict[str, Any]:
    payload = approval.payload
    origin = Origin.from_dict(payload["origin"])
    parsed = _parsed_from_json(payload["rows"])
    # The rows are resolved again: a user frozen since the request is not credited (in atomic mode, the whole
    # batch is refused and the approval stays pending).
    staged = _stage(
        session, origin=origin, tenant_id=payload["tenant_id"], mode=payload["mode"], dry_run=False, parsed=parsed
    )
    _ensure_pool_covers(session, staged.source, staged.total)
    outcome = _apply_batch(
        session,
        context=context,
        origin=origin,
        staged=staged,
        mode=payload["mode"],
        reason=payload["reason"],
        row_count=parsed.row_count,
        idempotency_key=_approval_key(approval.id),
        request_hash=bytes(approval.request_hash),
        approval=approval,
    )
    return outcome.result


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


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """`result` is the batch's answer; when the batch was held instead, `held` says by which approval."""

    result: dict[str, Any]
    created: bool
    held: Held | None = None


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
    """Validate, price and (unless dry run) apply a batch now, whatever its size. Returns (result, created).
    For in-process callers (benchmarks); the API goes through `submit_batch`."""
    outcome = submit_batch(session, context=context, request=request, parsed=parsed, policy=None)
    return outcome.result, outcome.created


def submit_batch(
    session: Session,
    *,
    context: RequestContext,
    request: BatchRequest,
    parsed: ParsedBatch,
    policy: approvals.Policy | None,
) -> BatchOutcome:
    """Validate, price and (unless dry run) apply a batch, or hold it for approval when `policy` says a row or
    the total needs a second operator."""
    principal = context.principal
    origin = Origin.of(principal)
    request_hash = batch_request_hash(request)
    stored_key = f"batch:{_key_scope(principal)}:{request.idempotency_key}"
    if not request.dry_run:
        stored = batches.find_batch(session, idempotency_key=stored_key, request_hash=request_hash)
        if stored is not None:
            return BatchOutcome(stored.result, created=False)
        if policy is not None:
            held = approvals.find_by_key(session, idempotency_key=stored_key, request_hash=request_hash)
            if held is not None:
                if held.status == ApprovalStatus.approved and held.result is not None:
                    return BatchOutcome(held.result, created=False)
                return BatchOutcome({}, created=False, held=Held(approval=held, replayed=True))

    if request.tenant_id is not None and principal.tenant_scope not in (None, request.tenant_id):
        raise TenantNotFound(f"tenant {request.tenant_id} not found")
    staged = _stage(
        session, origin=origin, tenant_id=request.tenant_id, mode=request.mode, dry_run=request.dry_run, parsed=parsed
    )
    if staged.source.tracked:
        pool = ledger.get_balance(session, account_id=staged.source.account_id)
        if staged.total > pool.available:
            # The pool may be empty because a duplicate of this very request just committed: replay it, do not
            # refuse it (refusing would invite a retry under a new key, and paying twice).
            stored = None
            if not request.dry_run:
                stored = batches.find_batch(session, idempotency_key=stored_key, request_hash=request_hash)
            if stored is not None:
                return BatchOutcome(stored.result, created=False)
            raise InsufficientTokens(
                f"the pool holds {pool.available} tokens; this batch needs {staged.total}",
                needed=staged.total,
                available=pool.available,
            )
    needs_approval = policy is not None and policy.batch_needs_approval(largest_row=staged.largest, total=staged.total)
    if request.dry_run:
        # A dry run applies nothing, so there is nothing to hold: it says what the real run would meet.
        return BatchOutcome(staged.result | {"approval_required": needs_approval}, created=False)
    if needs_approval:
        assert policy is not None
        approval, created = approvals.request(
            session,
            context=context,
            kind=ApprovalKind.batch,
            tenant_id=staged.batch_tenant,
            idempotency_key=stored_key,
            request_hash=request_hash,
            payload={
                "origin": origin.as_dict(),
                "mode": request.mode,
                "reason": request.reason,
                "tenant_id": request.tenant_id,
                "content_type": request.content_kind,
                "rows": _parsed_to_json(parsed),
            },
            total_amount=staged.total,
            row_count=parsed.row_count,
            reason=request.reason,
            policy=policy,
            summary={
                "mode": request.mode,
                "tenant_id": request.tenant_id,
                "rows": parsed.row_count,
                "applicable": staged.result["applied"],
                "failed": len(staged.result["failed"]),
                "largest_amount": staged.largest,
            },
        )
        return BatchOutcome({}, created=created, held=Held(approval=approval, replayed=not created))
    return _apply_batch(
        session,
        context=context,
        origin=origin,
        staged=staged,
        mode=request.mode,
        reason=request.reason,
        row_count=parsed.row_count,
        idempotency_key=stored_key,
        request_hash=request_hash,
    )


@dataclass(frozen=True, slots=True)
class _Staged:
    """A batch resolved and staged in `recharge_stage`, not yet applied."""

    result: dict[str, Any]
    failed: int
    source: Source
    batch_tenant: int | None
    total: int
    largest: int


def _stage(
    session: Session, *, origin: Origin, tenant_id: int | None, mode: str, dry_run: bool, parsed: ParsedBatch
) -> _Staged:
    scope_tenant = origin.tenant_scope if origin.tenant_scope is not None else tenant_id
    source = source_for(session, origin)
    batch_tenant = source.tenant_id if source.tracked else scope_tenant
    failures = parsed.failures + _resolve_rows(
        session, parsed=parsed, scope_tenant=scope_tenant, hide_other_tenants=not origin.is_staff
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
    largest = int(session.execute(text(f"SELECT coalesce(max(amount), 0) FROM {batches.STAGE_TABLE}")).scalar_one())
    result: dict[str, Any] = {
        "batch_id": None,
        "mode": mode,
        "dry_run": dry_run,
        "rows": parsed.row_count,
        "applied": applied,
        "total_amount": total,
        "failed": [f.as_dict() for f in failures],
    }
    if failures and mode == "atomic":
        raise BatchRejected(
            f"{len(failures)} of {parsed.row_count} rows failed; nothing was applied",
            **{**result, "applied": 0, "total_amount": 0},
        )
    return _Staged(result, len(failures), source, batch_tenant, total, largest)


def _apply_batch(
    session: Session,
    *,
    context: RequestContext,
    origin: Origin,
    staged: _Staged,
    mode: str,
    reason: str,
    row_count: int,
    idempotency_key: str,
    request_hash: bytes,
    approval: RechargeApproval | None = None,
) -> BatchOutcome:
    # Claimed only now, so the claim's foreign-key lock on the pool is not held while rows are resolved. A
    # concurrent duplicate waits here on the key and then replays.
    claimed = batches.begin_batch(
        session,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        mode=mode,
        tenant_id=staged.batch_tenant,
        actor=origin.label,
        reason=reason,
        source_account_id=staged.source.account_id,
        row_count=row_count,
    )
    if isinstance(claimed, batches.StoredBatch):
        return BatchOutcome(claimed.result, created=False)
    applied_batch = batches.apply_staged(
        session,
        batch_id=claimed,
        request_hash=request_hash,
        tenant_id=staged.batch_tenant,
        actor=origin.label,
        reason=reason,
        source_account_id=staged.source.account_id,
        source_tracked=staged.source.tracked,
    )
    result = staged.result | {
        "batch_id": claimed,
        "transaction_id": applied_batch.transaction_id,
        "applied": applied_batch.applied,
        "total_amount": applied_batch.total_amount,
    }
    if approval is not None:
        # The stored result (what GET /recharges/batches/{id} and replays show) names the approval behind it.
        result["approval_id"] = approval.id
    batches.finish_batch(
        session,
        batch_id=claimed,
        applied=applied_batch.applied,
        failed=staged.failed,
        total_amount=applied_batch.total_amount,
        result=result,
    )
    after = {
        "mode": mode,
        "reason": reason,
        "rows": row_count,
        "applied": applied_batch.applied,
        "failed": staged.failed,
        "total_amount": applied_batch.total_amount,
        "transaction_id": applied_batch.transaction_id,
        "source_account_id": staged.source.account_id,
    }
    if approval is not None:
        after |= {"approval_id": approval.id, "requested_by_user_id": approval.requested_by_user_id}
    audit.record(
        session,
        context=context,
        action="recharge.batch",
        target_type="recharge_batch",
        target_id=claimed,
        tenant_id=staged.batch_tenant,
        after=after,
    )
    return BatchOutcome(result, created=True)


def _parsed_to_json(parsed: ParsedBatch) -> dict[str, Any]:
    """The parsed rows as the approval stores them: what was requested, so approving applies exactly it
    (parsing the body again could give another answer once the ceiling or the row limit changes)."""
    return {
        "row_count": parsed.row_count,
        "row_nos": parsed.row_nos,
        "user_ids": parsed.user_ids,
        "emails": parsed.emails,
        "amounts": parsed.amounts,
        "references": parsed.references,
        "failures": [f.as_dict() for f in parsed.failures],
    }


def _parsed_from_json(rows: dict[str, Any]) -> ParsedBatch:
    return ParsedBatch(
        row_count=rows["row_count"],
        row_nos=rows["row_nos"],
        user_ids=rows["user_ids"],
        emails=rows["emails"],
        amounts=rows["amounts"],
        references=rows["references"],
        failures=[
            RowFailure(f["row"], f["code"], f["detail"], email=f.get("email"), user_id=f.get("user_id"))
            for f in rows["failures"]
        ],
    )


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
