"""Applying an approved grant request, as its requester asked (`facemint.approvals.approving.approve` locks the
approval, checks the four eyes and records the decision; making or changing the grant is this package's work).
The grant names its approval in the same write, which the database checks at commit (migration 0016)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from facemint.approvals.orm import RechargeApproval
from facemint.approvals.service import Applied
from facemint.context import RequestContext
from facemint.grants import service
from facemint.grants.errors import GrantChanged
from facemint.grants.schemas import GrantCreate, GrantUpdate


def apply_approved_grant(session: Session, *, context: RequestContext, approval: RechargeApproval) -> Applied:
    payload = approval.payload
    if payload["change"] == "create":
        body = payload["body"]
        grant = service.insert(
            session,
            context=context,
            data=GrantCreate.model_validate(body),
            tenant_id=body["tenant_id"],
            created_by=payload["created_by"],
            approval=approval,
        )
    else:
        grant = service.lock(session, grant_id=payload["grant_id"])
        # Approved against the terms it was asked on: another change applied since (a narrowing, or another
        # approval) would make this one set terms nobody saw together.
        if service.minting_terms(service.snapshot(grant)) != service.minting_terms(payload["before"]):
            raise GrantChanged(
                f"grant {grant.id}'s terms changed since this change was asked for; reject it and ask again",
                grant_id=grant.id,
                approval_id=approval.id,
            )
        changes = GrantUpdate.model_validate(payload["changes"]).model_dump(exclude_unset=True)
        grant = service.apply_changes(session, context=context, grant=grant, changes=changes, approval=approval)
    result = {"approval_id": approval.id, "grant_id": grant.id, "change": payload["change"]}
    return Applied(result, transaction_id=None)
