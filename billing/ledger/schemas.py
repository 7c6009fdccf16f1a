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


@dataclass(frozen=True, slots=True)
class LotTerms:
    """How a credit's lots are written: None takes the default (priority 50, no expiry, effective now, the source
    the transaction's kind implies). A credit that hands on tokens from another tracked account (a pool's) mirrors
    the lots it burned instead: their priority unless one is given, and the sooner of their expiry and this one."""

    priority: int | None = None
    expires_at: datetime | None = None
    effective_at: datetime | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Lot:
    lot_id: int
    account_id: int
    source: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    amount: int
    remaining: int
    held: int
    transaction_id: int | None
    created_at: datetime

    @property
    def available(self) -> int:
        return self.remaining - self.held


@dataclass(frozen=True, slots=True)
class NextExpiry:
    """The soonest expiry among an account's lots with tokens left, and how many tokens expire then unless spent."""

    expires_at: datetime
    amount: int


@dataclass(frozen=True, slots=True)
class Expiry:
    """One account's expiry transaction, written by the sweep."""

    account_id: int
    transaction_id: int
    amount: int
