from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from facemint import tenancy
from facemint.approvals.orm import RechargeApproval

Status = Literal["pending", "approved", "rejected", "expired"]
Kind = Literal["single", "batch", "adjustment", "reversal", "grant"]


class ApprovalRead(BaseModel):
    """A request held for a second operator: a recharge (`single`), a `batch`, an `adjustment`, a `reversal`, or a
    recurring `grant`'s creation or change. `result` is the applied outcome once approved (the ledger
    `transaction_id`; a batch's `batch_id` too; a grant's `grant_id`). `total_amount` is the tokens it moves (an
    adjustment's magnitude; a grant's: one period at the accounts eligible when it was asked, `row_count`)."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: Kind
    status: Status
    tenant_id: int | None
    requested_by_user_id: int
    requested_by_api_key_id: int | None
    total_amount: int
    row_count: int
    reason: str
    expires_at: datetime
    decided_by_user_id: int | None
    decided_at: datetime | None
    decision_note: str | None
    result: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def for_reader(cls, approval: RechargeApproval, *, tenant_scope: int | None) -> ApprovalRead:
        """The approval as a reader of `tenant_scope` may see it (a batch's result redacted for a tenant, see
        `tenancy.redact_batch_result`). Never set on the ORM row: a decided approval cannot change."""
        read = cls.model_validate(approval)
        return read.model_copy(update={"result": tenancy.redact_batch_result(read.result, tenant_scope)})


class ApprovalDetail(ApprovalRead):
    """Adds what approving it would apply and why it was held (`held_because`: `amount`, `batch_total`,
    `daily_total` or `platform_grant`): the recharge or adjustment body and its recipient, a reversal's original
    transaction, a batch's mode, scope and (for platform staff) its first rows, or a grant's `change` (`create`
    or `update`), the `terms` it would take, its terms `before` and the `changes` asked (an update), and the
    `eligible_accounts` when it was asked."""

    request: dict[str, Any]


class ApprovalDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Annotated[str | None, StringConstraints(strip_whitespace=True, max_length=500)] = None
