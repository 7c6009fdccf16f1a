from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Far above any balance, and small enough that threshold + hysteresis stays within a bigint.
MAX_TOKENS = 10**15

AccountKindName = Literal["user", "tenant_pool"]


def default_hysteresis(threshold: int) -> int:
    """A tenth of the threshold, at least 1 token: an account hovering at its threshold re-arms (and can alert
    again) only once it has risen clearly above it."""
    return max(1, threshold // 10)


class BalanceAlertSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Strict: JSON `true`, `1.0` or `"10"` are not token amounts.
    threshold: int = Field(
        strict=True, gt=0, le=MAX_TOKENS, description="Alert once available tokens (balance - held) drop below this"
    )
    hysteresis: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=MAX_TOKENS,
        description="Re-armed once available reaches threshold + hysteresis; default max(1, threshold // 10)",
    )

    @property
    def resolved_hysteresis(self) -> int:
        return default_hysteresis(self.threshold) if self.hysteresis is None else self.hysteresis


class BalanceAlertRead(BaseModel):
    account: AccountKindName
    user_id: int | None
    tenant_id: int | None
    threshold: int
    hysteresis: int
    rearm_at: int  # threshold + hysteresis
    # False from the alert that fired until the account re-arms.
    armed: bool
    available: int  # the account's available tokens now
    fired_at: datetime | None
    rearmed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class BalanceLowData(BaseModel):
    account: AccountKindName
    tenant_id: int
    user_id: int | None  # None for the tenant's pool
    available: int  # when the alert fired
    threshold: int
    rearm_at: int


class BalanceLowEvent(BaseModel):
    """The body of a `balance.low` account event (the shape of job events: type, timestamp, data)."""

    type: Literal["balance.low"] = "balance.low"
    timestamp: datetime
    data: BalanceLowData
