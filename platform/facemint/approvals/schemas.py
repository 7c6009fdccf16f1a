from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

Status = Literal["pending", "approved", "rejected", "expired"]


class ApprovalRead(BaseModel):
    """A recharge held for a second operator. `result` is the applied outcome once approved (the ledger
    `transaction_id` of a single recharge; the `batch_id` and `transaction_id` of a batch)."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: Literal["single", "batch"]
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


class ApprovalDetail(ApprovalRead):
    """Adds what approving it would apply: the recharge body and its recipient, or a batch's mode, scope and
    (for platform staff) its first rows."""

    request: dict[str, Any]


class ApprovalDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Annotated[str | None, StringConstraints(strip_whitespace=True, max_length=500)] = None
