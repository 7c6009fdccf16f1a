"""Plain results the ledger hands back (no ORM objects cross the package boundary)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: int
    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True, slots=True)
class Posting:
    transaction_id: int
    kind: str
    amount: int
    replayed: bool
    created_at: datetime
    tenant_id: int | None


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold_id: int
    account_id: int
    amount: int
    status: str
    captured_amount: int | None
    replayed: bool
    # The account's available tokens right after a new reserve (None when not known: replays, other operations).
    available_after: int | None = None
