from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class LotRead(BaseModel):
    """A credit lot: tokens credited together, spent in the burn order (priority, soonest expiry with none last,
    oldest); `remaining - held` of it is available."""

    id: int
    source: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    amount: int
    remaining: int
    held: int


class NextExpiryRead(BaseModel):
    """The soonest expiry among the lots with tokens left, and how many tokens expire then unless spent first."""

    expires_at: datetime
    amount: int


class BalanceRead(BaseModel):
    available: int
    held: int
    balance: int
    # The lots with tokens left, in the order they are spent (the first 50), and the next expiry.
    lots: list[LotRead] = []
    next_expiry: NextExpiryRead | None = None


class AccountBalanceRead(BalanceRead):
    account_id: int
    user_id: int | None = None
    email: str | None = None
    tenant_id: int | None = None
    kind: str


class LedgerEntryRead(BaseModel):
    id: int
    transaction_id: int
    kind: str
    amount: int
    balance_after: int | None
    reason: str | None
    reference: str | None
    created_at: datetime


class AdjustmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int = Field(gt=0)
    # Strict: JSON `true`, `1.0` or `"10"` are not token amounts (lax mode would post `true` as 1 token).
    amount: int = Field(strict=True, description="Signed whole tokens: positive credits the user, negative debits")
    reason: Reason


class ReversalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class PostingRead(BaseModel):
    transaction_id: int
    kind: str
    amount: int
    replayed: bool
    created_at: datetime
