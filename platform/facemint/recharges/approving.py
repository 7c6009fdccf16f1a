"""Approving a held recharge: the second operator's decision applies it, exactly once, as its requester asked.
Storing and deciding approvals is facemint.approvals' work; moving the tokens is this package's."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from facemint.approvals import service as approvals
from facemint.approvals.errors import SelfApproval
from facemint.approvals.orm import ApprovalKind, ApprovalStatus, RechargeApproval
from facemint.context import RequestContext
from facemint.recharges import batch, service
from facemint.recharges.origin import Origin, approval_key, ensure_pool_covers
from facemint.recharges.parsing import ParsedBatch
from facemint.users.errors import UserNotFound
from facemint.users.orm import User


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
        service.ensure_recipient_open(session, user)
    posting = service.credit(
        session,
        context=context,
        origin=Origin.from_dict(payload["origin"]),
        body=body,
        target_account_id=payload["target_account_id"],
        target_tenant_id=payload["target_tenant_id"],
        idempotency_key=approval_key(approval.id),
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
    parsed = ParsedBatch.from_dict(payload["rows"])
    # The rows are resolved again: a user frozen since the request is not credited (in atomic mode, the whole
    # batch is refused and the approval stays pending).
    staged = batch.stage(
        session, origin=origin, tenant_id=payload["tenant_id"], mode=payload["mode"], dry_run=False, parsed=parsed
    )
    ensure_pool_covers(session, staged.source, staged.total)
    outcome = batch.apply_batch(
        session,
        context=context,
        origin=origin,
        staged=staged,
        mode=payload["mode"],
        reason=payload["reason"],
        row_count=parsed.row_count,
        idempotency_key=approval_key(approval.id),
        request_hash=bytes(approval.request_hash),
        approval=approval,
    )
    return outcome.result
