"""Four-eyes approvals: when a request that moves staff tokens waits for a second operator (`Policy`, and the
requester's rolling 24-hour total), storing held requests (recharges, batches, adjustments, reversals, and
recurring grants, which `facemint.grants.service` decides to hold) and moving them, one way, to an outcome.
Applying an approved request is its own domain's work, orchestrated by `facemint.approvals.approving.approve`:
this module never moves tokens.

Services never commit; the request (or the worker's sweep) boundary does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, defer

from billing.errors import IdempotencyConflict
from facemint import tenancy
from facemint.approvals.errors import ApprovalExpired, ApprovalNotFound, ApprovalNotPending
from facemint.approvals.orm import ApprovalKind, ApprovalStatus, RechargeApproval
from facemint.audit import service as audit
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant

TARGET_TYPE = "recharge_approval"
# What a batch approval shows of its rows: enough to judge it, never a 100,000-row document in a response.
PREVIEW_ROWS = 100


@dataclass(frozen=True, slots=True)
class Policy:
    """When a request that moves tokens waits for a second operator. The thresholds apply to every requester,
    tenant admins spending their pool included: the risk (a typo'd amount, one large amount split into many
    small ones) is the same whoever types it.

    - one movement (a recharge, a batch row, an adjustment's magnitude, a reversed transaction) above
      `threshold_amount`: reason `amount`;
    - a batch whose total is above `threshold_batch_total`: reason `batch_total`;
    - what the requester applied without review in the last 24 hours, plus this request, above
      `threshold_daily_total`: reason `daily_total` (see `hold_reason`)."""

    threshold_amount: int
    threshold_batch_total: int
    threshold_daily_total: int
    ttl_seconds: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            threshold_amount=settings.approval_threshold_amount,
            threshold_batch_total=settings.approval_threshold_batch_total,
            threshold_daily_total=settings.approval_threshold_daily_total,
            ttl_seconds=settings.approval_ttl_seconds,
        )

    def size_reason(self, *, amount: int, largest: int | None = None) -> str | None:
        """Why a request of `amount` tokens waits whatever came before it; a batch gives its total as `amount` and
        its largest row as `largest`. None: its size alone does not hold it."""
        if (amount if largest is None else largest) > self.threshold_amount:
            return "amount"
        if largest is not None and amount > self.threshold_batch_total:
            return "batch_total"
        return None

    def window_reason(self, *, unreviewed: int, amount: int) -> str | None:
        """`daily_total` when `amount` on top of `unreviewed` (applied without review in the last 24 hours) is
        above the daily total."""
        return "daily_total" if unreviewed + amount > self.threshold_daily_total else None


@dataclass(frozen=True, slots=True)
class Held:
    """A request that was not applied: it waits for approval (or was rejected or expired without being)."""

    approval: RechargeApproval
    replayed: bool


@dataclass(frozen=True, slots=True)
class Applied:
    """What approving applied: `result` is stored on the approval, `transaction_id` / `batch_id` link it."""

    result: dict[str, Any]
    transaction_id: int | None
    batch_id: int | None = None


def approval_key(approval_id: int) -> str:
    # What applying an approval is idempotent on: a second approval of the same request can never post again.
    return f"approval:{approval_id}"


def approved_from(approval: RechargeApproval | None) -> dict[str, Any]:
    """What an applied request's audit event adds when it was applied from an approval. The 24-hour total leaves
    such events out (`unreviewed_total`): they were reviewed."""
    if approval is None:
        return {}
    return {"approval_id": approval.id, "requested_by_user_id": approval.requested_by_user_id}


# --- the requester's rolling 24-hour total -------------------------------------------------------------

# What each applied movement's audit event says it moved. A reversal recorded before reversals carried their
# amount is read from its ledger transaction.
_UNREVIEWED_SQL = text(
    """
    SELECT coalesce(sum(CASE ev.action
        WHEN 'recharge.batch' THEN CAST(ev.after ->> 'total_amount' AS bigint)
        WHEN 'ledger.adjust' THEN abs(CAST(ev.after ->> 'amount' AS bigint))
        WHEN 'ledger.reverse' THEN coalesce(
            CAST(ev.after ->> 'amount' AS bigint),
            (SELECT t.amount FROM ledger_transactions t WHERE t.id = CAST(ev.target_id AS bigint)))
        ELSE CAST(ev.after ->> 'amount' AS bigint)
    END), 0)
    FROM audit_events ev
    WHERE ev.actor_user_id = :user_id
      AND ev.occurred_at > now() - interval '24 hours'
      AND ev.action IN ('recharge.create', 'recharge.batch', 'ledger.adjust', 'ledger.reverse')
      AND NOT ev.after ? 'approval_id'
    """
)


def serialise_requester(session: Session, *, user_id: int) -> None:
    """Hold `user_id`'s requests one at a time until this transaction ends: of two concurrent small requests,
    the second counts the first (committed by then) in its 24-hour total, so both cannot slip under it. Taken
    before the replay checks and any row lock, so a duplicate waits here and then replays."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"), {"lock": f"approval-window:{user_id}"}
    )


def unreviewed_total(session: Session, *, user_id: int) -> int:
    """Tokens `user_id` (whatever key it used) moved without review in the last 24 hours: single recharges,
    batch totals, adjustments' magnitudes and reversals, from the audit trail, which records each in the same
    transaction as the movement."""
    return int(session.execute(_UNREVIEWED_SQL, {"user_id": user_id}).scalar_one())


def hold_reason(
    session: Session, policy: Policy, *, user_id: int, amount: int, largest: int | None = None
) -> str | None:
    """Why a request by `user_id` moving `amount` tokens (a batch: its total, and `largest` its largest row)
    waits for a second operator, or None when it applies now. Call `serialise_requester` first."""
    if amount <= 0:
        return None  # nothing moves (a partial batch whose every row failed): nothing to review
    reason = policy.size_reason(amount=amount, largest=largest)
    if reason is not None:
        return reason
    return policy.window_reason(unreviewed=unreviewed_total(session, user_id=user_id), amount=amount)


# --- requesting ----------------------------------------------------------------------------------------


def find_by_key(session: Session, *, idempotency_key: str, request_hash: bytes) -> RechargeApproval | None:
    """The approval a request with this key already created (expired first if due), None if there is none; a
    different request under the same key is refused."""
    approval = session.scalars(
        select(RechargeApproval)
        .where(RechargeApproval.idempotency_key == idempotency_key)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if approval is None:
        return None
    if bytes(approval.request_hash) != request_hash:
        raise IdempotencyConflict("this idempotency key was already used for a different request")
    return _expired_if_due(session, approval)


def request(
    session: Session,
    *,
    context: RequestContext,
    kind: ApprovalKind,
    tenant_id: int | None,
    idempotency_key: str,
    request_hash: bytes,
    payload: dict[str, Any],
    total_amount: int,
    row_count: int,
    reason: str,
    policy: Policy,
    summary: dict[str, Any],
    held_because: str,
) -> tuple[RechargeApproval, bool]:
    """Hold a request for approval (`held_because`: the `Policy` reason). Returns (approval, created): a concurrent
    duplicate of the same request waits on the key, then gets the first one's approval. `total_amount` is the
    tokens it moves (an adjustment's magnitude)."""
    principal = context.principal
    approval_id = session.execute(
        insert(RechargeApproval)
        .values(
            kind=kind.value,
            tenant_id=tenant_id,
            requested_by_user_id=principal.user_id,
            requested_by_api_key_id=principal.api_key_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            payload={**payload, "held_because": held_because},
            total_amount=total_amount,
            row_count=row_count,
            reason=reason,
            expires_at=func.now() + timedelta(seconds=policy.ttl_seconds),
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(RechargeApproval.id)
    ).scalar_one_or_none()
    if approval_id is None:
        existing = find_by_key(session, idempotency_key=idempotency_key, request_hash=request_hash)
        assert existing is not None  # the conflicting row committed before ON CONFLICT could see it
        return existing, False
    approval = _load(session, approval_id)
    audit.record(
        session,
        context=context,
        action="recharge.approval.request",
        target_type=TARGET_TYPE,
        target_id=approval.id,
        tenant_id=tenant_id,
        after={
            "kind": kind.value,
            "total_amount": total_amount,
            "row_count": row_count,
            "reason": reason,
            "expires_at": approval.expires_at.isoformat(),
            "held_because": held_because,
            "request": summary,
        },
    )
    return approval, True


# --- reading -------------------------------------------------------------------------------------------


def get(session: Session, *, approval_id: int, tenant_scope: int | None) -> RechargeApproval:
    approval = _visible(session, approval_id=approval_id, tenant_scope=tenant_scope, for_update=False)
    return _expired_if_due(session, approval)


def list_approvals(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    status: str | None,
    before_id: int | None,
    limit: int,
    kind: str | None = None,
) -> list[RechargeApproval]:
    """Newest first. Expires what is due first, so a list never shows a pending approval nobody can approve.
    Without `payload`: a list never shows it, and a batch's holds every row."""
    expire_due(session)
    query = within_tenant(
        select(RechargeApproval).options(defer(RechargeApproval.payload)),
        RechargeApproval.tenant_id,
        tenant_scope=tenant_scope,
        tenant_id=tenant_id,
    )
    if status is not None:
        query = query.where(RechargeApproval.status == status)
    if kind is not None:
        query = query.where(RechargeApproval.kind == kind)
    query = newest_first(query, RechargeApproval.id, before_id=before_id, limit=limit)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def request_view(approval: RechargeApproval, *, staff: bool) -> dict[str, Any]:
    """What approving would apply, and why it was held. A batch's rows are shown to platform staff only: a staff
    batch scoped to a tenant may name other tenants' users."""
    payload = approval.payload
    held: dict[str, Any] = {"held_because": payload.get("held_because")}
    if approval.kind in (ApprovalKind.single, ApprovalKind.adjustment):
        return {"body": payload["body"], "target": payload["target"], **held}
    if approval.kind == ApprovalKind.reversal:
        return {"body": payload["body"], "original": payload["original"], **held}
    if approval.kind == ApprovalKind.grant:
        keys = ("change", "grant_id", "terms", "before", "changes", "eligible_accounts")
        return {key: payload[key] for key in keys if key in payload} | held
    rows = payload["rows"]
    view: dict[str, Any] = {
        "mode": payload["mode"],
        "reason": payload["reason"],
        "tenant_id": payload["tenant_id"],
        "content_type": payload["content_type"],
        "rows": rows["row_count"],
        "largest_amount": max(rows["amounts"], default=0),
        **held,
    }
    if staff:
        shown = min(PREVIEW_ROWS, len(rows["row_nos"]))
        view["first_rows"] = [
            {
                "row": rows["row_nos"][i],
                "user_id": rows["user_ids"][i],
                "email": rows["emails"][i],
                "amount": rows["amounts"][i],
                "reference": rows["references"][i],
            }
            for i in range(shown)
        ]
        view["unparsed_rows"] = rows["failures"][:PREVIEW_ROWS]
    return view


# --- deciding ------------------------------------------------------------------------------------------


def lock(session: Session, *, approval_id: int, tenant_scope: int | None) -> RechargeApproval:
    """The approval, locked until the transaction ends: a second approver waits here, then sees the outcome."""
    return _visible(session, approval_id=approval_id, tenant_scope=tenant_scope, for_update=True)


def _visible(session: Session, *, approval_id: int, tenant_scope: int | None, for_update: bool) -> RechargeApproval:
    """The approval as the database has it now, if the caller's tenant scope may see it."""
    query = select(RechargeApproval).where(RechargeApproval.id == approval_id)
    if for_update:
        query = query.with_for_update()
    approval = session.scalars(query.execution_options(populate_existing=True)).one_or_none()
    if approval is None or not tenancy.is_visible(tenant_scope, approval.tenant_id):
        raise ApprovalNotFound(f"recharge approval {approval_id} not found")
    return approval


def ensure_pending(session: Session, approval: RechargeApproval) -> RechargeApproval:
    """Refuse a decided approval; expire a due one on the spot. `ApprovalExpired` is raised after the expiry is
    recorded: the caller answers it without rolling back (see the approvals endpoints)."""
    approval = _expired_if_due(session, approval)
    if approval.status == ApprovalStatus.expired:
        raise ApprovalExpired(
            f"recharge approval {approval.id} expired at {approval.expires_at.isoformat()}; nothing was applied",
            approval_id=approval.id,
            expires_at=approval.expires_at.isoformat(),
        )
    if approval.status != ApprovalStatus.pending:
        raise ApprovalNotPending(
            f"recharge approval {approval.id} is already {approval.status}",
            approval_id=approval.id,
            approval_status=approval.status,
        )
    return approval


def decide(
    session: Session,
    *,
    context: RequestContext,
    approval: RechargeApproval,
    status: ApprovalStatus,
    note: str | None,
    result: dict[str, Any] | None = None,
    transaction_id: int | None = None,
    batch_id: int | None = None,
) -> RechargeApproval:
    """pending -> approved or rejected, as one conditional UPDATE: it changes nothing unless the approval is
    still pending and not yet due to expire, so a decision can never land twice. `result` is stored in full;
    the audit event, which the approval's tenant reads, records only its ids and counts (`_counts_only`)."""
    if status not in (ApprovalStatus.approved, ApprovalStatus.rejected):
        raise ValueError(f"an operator approves or rejects; {status} is not a decision")
    decided = session.execute(
        update(RechargeApproval)
        .where(
            RechargeApproval.id == approval.id,
            RechargeApproval.status == ApprovalStatus.pending.value,
            RechargeApproval.expires_at > func.now(),
        )
        .values(
            status=status.value,
            decided_by_user_id=context.principal.user_id,
            decided_at=func.now(),
            decision_note=note,
            # Left out rather than set to None: the JSON type would store a JSON null, not SQL NULL.
            **({"result": result} if result is not None else {}),
            transaction_id=transaction_id,
            batch_id=batch_id,
        )
        .returning(RechargeApproval.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if decided is None:
        current = _load(session, approval.id)
        raise ApprovalNotPending(
            f"recharge approval {approval.id} is already {current.status}",
            approval_id=approval.id,
            approval_status=current.status,
        )
    approval = _load(session, approval.id)
    audit.record(
        session,
        context=context,
        action=f"recharge.approval.{'approve' if status == ApprovalStatus.approved else 'reject'}",
        target_type=TARGET_TYPE,
        target_id=approval.id,
        tenant_id=approval.tenant_id,
        before={"status": ApprovalStatus.pending.value},
        after={
            "status": status.value,
            "note": note,
            "requested_by_user_id": approval.requested_by_user_id,
            "result": _counts_only(result),
        },
    )
    return approval


def _counts_only(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A result's scalar fields, its lists as counts and without nested objects: a batch's failed rows (which may
    name other tenants' users) become their number; a single recharge's target stays in its request event."""
    if result is None:
        return None
    return {
        key: len(value) if isinstance(value, list) else value
        for key, value in result.items()
        if not isinstance(value, dict)
    }


def reject(session: Session, *, context: RequestContext, approval_id: int, note: str | None) -> RechargeApproval:
    """Nothing is applied. The requester may reject (withdraw) their own request: only approving needs four
    eyes."""
    approval = lock(session, approval_id=approval_id, tenant_scope=context.principal.tenant_scope)
    approval = ensure_pending(session, approval)
    return decide(session, context=context, approval=approval, status=ApprovalStatus.rejected, note=note)


# --- expiry --------------------------------------------------------------------------------------------

_EXPIRE_SQL = text(
    """
    WITH due AS (
        SELECT id FROM recharge_approvals
        WHERE status = 'pending' AND expires_at <= now()
          AND (CAST(:approval_id AS bigint) IS NULL OR id = :approval_id)
        ORDER BY id
        -- An approval an operator is deciding right now is theirs to expire: the sweep neither waits nor fights.
        FOR UPDATE SKIP LOCKED
    )
    UPDATE recharge_approvals a SET status = 'expired', decided_at = now()
    FROM due WHERE a.id = due.id
    RETURNING a.id, a.tenant_id, a.kind, a.total_amount, a.requested_by_user_id, a.expires_at
    """
)


def expire_due(session: Session, *, approval_id: int | None = None) -> int:
    """Mark every pending approval past its `expires_at` expired (or only `approval_id`); returns how many. For
    the worker's periodic sweep; reads and approvals also expire lazily."""
    expired = session.execute(_EXPIRE_SQL, {"approval_id": approval_id}).all()
    for row in expired:
        audit.record(
            session,
            context=None,
            action="recharge.approval.expire",
            target_type=TARGET_TYPE,
            target_id=row.id,
            tenant_id=row.tenant_id,
            before={"status": ApprovalStatus.pending.value},
            after={
                "status": ApprovalStatus.expired.value,
                "kind": row.kind,
                "total_amount": row.total_amount,
                "requested_by_user_id": row.requested_by_user_id,
                "expires_at": row.expires_at.isoformat(),
            },
        )
    return len(expired)


def _expired_if_due(session: Session, approval: RechargeApproval) -> RechargeApproval:
    # The Python clock only decides whether to ask; the database's clock decides (as the trigger does).
    if approval.status != ApprovalStatus.pending or approval.expires_at > datetime.now(UTC):
        return approval
    if expire_due(session, approval_id=approval.id) == 0:
        return approval
    return _load(session, approval.id)


def _load(session: Session, approval_id: int) -> RechargeApproval:
    return session.scalars(
        select(RechargeApproval).where(RechargeApproval.id == approval_id).execution_options(populate_existing=True)
    ).one()
