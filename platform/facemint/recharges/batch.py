"""Batch recharges: rows resolved to users in one set-based pass, staged, then applied as one ledger
transaction by billing; or held for approval when a row or the total is above the thresholds, or the total would
take the requester past its 24-hour total (applied later, `approving.apply_approved_batch`)."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.errors import InsufficientTokens
from billing.recharge import service as batches
from facemint import tenancy
from facemint.approvals import service as approvals
from facemint.approvals.orm import ApprovalKind, ApprovalStatus, RechargeApproval
from facemint.approvals.service import Held, approved_from
from facemint.audit import service as audit
from facemint.balance_alerts import evaluation as balance_alerts
from facemint.context import RequestContext
from facemint.recharges.errors import BatchRejected
from facemint.recharges.origin import Origin, Source, ensure_pool_covers, key_scope, source_for
from facemint.recharges.parsing import ParsedBatch, RowFailure
from facemint.tenants.errors import TenantNotFound


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
    # Checked when parsed, and again when an approved batch is applied later.
    "expiry_passed": "the row's expires_at has passed",
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
    progress: Callable[[str], object] | None = None,
) -> BatchOutcome:
    """Validate, price and (unless dry run) apply a batch, or hold it for approval when `policy` says a row, the
    total or the requester's 24-hour total needs a second operator. `progress` is told each phase as it starts
    (`validating`: resolving the rows; `writing`: the ledger entries), for a caller that shows a long run."""
    report = progress or (lambda phase: None)
    principal = context.principal
    origin = Origin.of(principal)
    request_hash = batch_request_hash(request)
    stored_key = f"batch:{key_scope(principal)}:{request.idempotency_key}"
    if not request.dry_run:
        if policy is not None:
            approvals.serialise_requester(session, user_id=principal.user_id)
        stored = batches.find_batch(session, idempotency_key=stored_key, request_hash=request_hash)
        if stored is not None:
            return BatchOutcome(stored.result, created=False)
        if policy is not None:
            held = approvals.find_by_key(session, idempotency_key=stored_key, request_hash=request_hash)
            if held is not None:
                if held.status == ApprovalStatus.approved and held.result is not None:
                    return BatchOutcome(held.result, created=False)
                return BatchOutcome({}, created=False, held=Held(approval=held, replayed=True))

    tenancy.ensure_visible(
        principal.tenant_scope,
        request.tenant_id if request.tenant_id is not None else principal.tenant_scope,
        not_found=TenantNotFound(f"tenant {request.tenant_id} not found"),
    )
    report("validating")
    staged = stage(
        session, origin=origin, tenant_id=request.tenant_id, mode=request.mode, dry_run=request.dry_run, parsed=parsed
    )
    try:
        ensure_pool_covers(session, staged.source, staged.total, what="this batch")
    except InsufficientTokens:
        # The pool may be empty because a duplicate of this very request just committed: replay it, do not
        # refuse it (refusing would invite a retry under a new key, and paying twice).
        stored = (
            None
            if request.dry_run
            else batches.find_batch(session, idempotency_key=stored_key, request_hash=request_hash)
        )
        if stored is None:
            raise
        return BatchOutcome(stored.result, created=False)
    held_because = (
        approvals.hold_reason(session, policy, user_id=principal.user_id, amount=staged.total, largest=staged.largest)
        if policy is not None
        else None
    )
    if request.dry_run:
        # A dry run applies nothing, so there is nothing to hold: it says what the real run would meet.
        return BatchOutcome(staged.result | {"approval_required": held_because is not None}, created=False)
    if policy is not None and held_because is not None:
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
                "rows": parsed.as_dict(),
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
            held_because=held_because,
        )
        return BatchOutcome({}, created=created, held=Held(approval=approval, replayed=not created))
    report("writing")
    return apply_batch(
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
class Staged:
    """A batch resolved and staged in `recharge_stage`, not yet applied."""

    result: dict[str, Any]
    failed: int
    source: Source
    batch_tenant: int | None
    total: int
    largest: int


def stage(
    session: Session, *, origin: Origin, tenant_id: int | None, mode: str, dry_run: bool, parsed: ParsedBatch
) -> Staged:
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
            f"INSERT INTO {batches.STAGE_TABLE} (row_no, account_id, amount, reference, priority, expires_at) "
            "SELECT row_no, account_id, amount, reference, priority, expires_at FROM recharge_resolved "
            "WHERE failure IS NULL"
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
    return Staged(result, len(failures), source, batch_tenant, total, largest)


def apply_batch(
    session: Session,
    *,
    context: RequestContext,
    origin: Origin,
    staged: Staged,
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
    if applied_batch.transaction_id is not None:
        # The pool it drew on (a tenant admin's batch) and every user it credited.
        balance_alerts.evaluate_transaction(session, transaction_id=applied_batch.transaction_id)
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
        **approved_from(approval),
    }
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


def _copy_rows(session: Session, parsed: ParsedBatch) -> None:
    """Load the parsed rows with COPY: one round trip for 100,000 rows."""
    session.execute(
        text(
            "CREATE TEMP TABLE recharge_input (row_no integer, user_id bigint, email text, amount bigint, "
            "reference text, priority integer, expires_at timestamptz) ON COMMIT DROP"
        )
    )
    cursor = session.connection().connection.cursor()
    try:
        cursor.copy_expert(
            "COPY recharge_input (row_no, user_id, email, amount, reference, priority, expires_at) "
            "FROM STDIN WITH (FORMAT csv)",
            _copy_text(parsed),
        )
    finally:
        cursor.close()
    # A fresh temp table has no statistics: without them 100,000 rows are planned as a handful, and the joins
    # and sorts below spill to disk.
    session.execute(text("ANALYZE recharge_input"))
    session.execute(text("SET LOCAL work_mem = '64MB'"))


def _copy_text(parsed: ParsedBatch) -> io.StringIO:
    # CSV format: an unquoted empty field is NULL. Parsing turned blank emails and references into None, so no
    # empty string reaches COPY, and csv quotes whatever needs quoting (commas, quotes, newlines, tabs).
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(
        zip(
            parsed.row_nos,
            parsed.user_ids,
            parsed.emails,
            parsed.amounts,
            parsed.references,
            parsed.priorities,
            parsed.expiries,
            strict=True,
        )
    )
    buffer.seek(0)
    return buffer


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
                SELECT i.row_no, i.amount, i.reference, i.priority, i.expires_at, i.email,
                       i.user_id AS given_user_id,
                       m.id AS user_id, m.tenant_id, m.status AS user_status, m.account_id,
                       t.status AS tenant_status,
                       row_number() OVER (PARTITION BY m.id ORDER BY i.row_no) AS occurrence
                FROM recharge_input i
                LEFT JOIN matched m ON m.row_no = i.row_no
                LEFT JOIN tenants t ON t.id = m.tenant_id
            )
            SELECT row_no, amount, reference, priority, expires_at, email, given_user_id, user_id, account_id,
                   CASE
                       WHEN user_id IS NULL THEN 'unknown_user'
                       WHEN CAST(:scope_tenant AS bigint) IS NOT NULL
                            AND tenant_id IS DISTINCT FROM CAST(:scope_tenant AS bigint)
                           THEN CASE WHEN :hide THEN 'unknown_user' ELSE 'user_of_other_tenant' END
                       WHEN user_status <> 'active' THEN 'user_frozen'
                       WHEN tenant_status = 'suspended' THEN 'tenant_suspended'
                       WHEN occurrence > 1 THEN 'duplicate_user'
                       WHEN expires_at <= now() THEN 'expiry_passed'
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


def batch_rows(session: Session, *, batch_id: int, after_row: int | None, limit: int) -> list[dict[str, Any]]:
    """The rows a batch credited, in row order after `after_row`: each one's user, amount, the balance it left and
    its reference. (Rows that failed are in the batch's stored result.) A batch credits only users within its
    tenant (`stage`), so a reader who may see the batch may see every row."""
    # The page is cut before the users are joined: joined first, all of a 100,000-row batch's users are looked up.
    rows = session.execute(
        text(
            """
            WITH page AS (
                SELECT e.row_no, e.account_id, e.amount, e.balance_after, e.reference
                FROM ledger_entries e
                WHERE e.transaction_id = (SELECT id FROM ledger_transactions WHERE batch_id = :batch_id)
                  AND e.row_no > coalesce(CAST(:after_row AS integer), 0)
                ORDER BY e.row_no
                LIMIT :limit
            )
            SELECT p.row_no, u.id AS user_id, u.email, p.amount, p.balance_after, p.reference
            FROM page p LEFT JOIN users u ON u.account_id = p.account_id
            ORDER BY p.row_no
            """
        ),
        {"batch_id": batch_id, "after_row": after_row, "limit": limit},
    )
    return [dict(r._mapping) for r in rows]
