"""Applying an approved recharge or batch, as its requester asked (`facemint.approvals.approving.approve` locks
the approval, checks the four eyes and records the decision; moving the tokens is this package's work)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from facemint.approvals.orm import RechargeApproval
from facemint.approvals.service import Applied, approval_key
from facemint.context import RequestContext
from facemint.recharges import batch, service
from facemint.recharges.origin import Origin, ensure_pool_covers
from facemint.recharges.parsing import ParsedBatch
from facemint.users.errors import UserNotFound
from facemint.users.orm import User


def apply_approved_single(session: Session, *, context: RequestContext, approval: RechargeApproval) -> Applied:
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
    result = {
        "approval_id": approval.id,
        "transaction_id": posting.transaction_id,
        "amount": posting.amount,
        "target": payload["target"],
    }
    return Applied(result, transaction_id=posting.transaction_id)


def apply_approved_batch(session: Session, *, context: RequestContext, approval: RechargeApproval) -> Applied:
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
    result = outcome.result
    return Applied(result, transaction_id=result.get("transaction_id"), batch_id=result["batch_id"])
