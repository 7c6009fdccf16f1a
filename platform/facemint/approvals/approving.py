"""Approving a held request: the second operator's decision applies it, exactly once, as its requester asked,
and marks it approved in the same transaction. Applying is the held request's own domain's work (recharges and
batches: `facemint.recharges.approving`; adjustments and reversals: `facemint.balances.service`; recurring grants:
`facemint.grants.approving`)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from facemint.approvals import service as approvals
from facemint.approvals.errors import SelfApproval
from facemint.approvals.orm import ApprovalKind, ApprovalStatus, RechargeApproval
from facemint.balances import service as balances
from facemint.context import RequestContext
from facemint.grants import approving as grants
from facemint.recharges import approving as recharges

Applier = Callable[..., approvals.Applied]

_APPLIERS: dict[str, Applier] = {
    ApprovalKind.single: recharges.apply_approved_single,
    ApprovalKind.batch: recharges.apply_approved_batch,
    ApprovalKind.adjustment: balances.apply_approved_adjustment,
    ApprovalKind.reversal: balances.apply_approved_reversal,
    ApprovalKind.grant: grants.apply_approved_grant,
}


def approve(session: Session, *, context: RequestContext, approval_id: int, note: str | None) -> RechargeApproval:
    """Apply a held request, exactly once, and mark it approved in the same transaction.

    The approval row is locked first: a concurrent second approval waits, then finds it decided. If applying
    fails (the recipient was frozen since, an atomic batch now has failing rows, the pool or the account ran
    dry, a grant changed since), the error rolls everything back and the approval stays pending, to be rejected
    or retried."""
    principal = context.principal
    approval = approvals.lock(session, approval_id=approval_id, tenant_scope=principal.tenant_scope)
    if approval.requested_by_user_id == principal.user_id:
        raise SelfApproval("a held request needs a second person: its requester cannot approve it")
    approval = approvals.ensure_pending(session, approval)
    applied = _APPLIERS[approval.kind](session, context=context, approval=approval)
    return approvals.decide(
        session,
        context=context,
        approval=approval,
        status=ApprovalStatus.approved,
        note=note,
        result=applied.result,
        transaction_id=applied.transaction_id,
        batch_id=applied.batch_id,
    )
