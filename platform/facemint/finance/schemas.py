"""Response shapes of the finance views."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field


class RechargeRow(BaseModel):
    entry_id: int
    transaction_id: int
    batch_id: int | None
    row_no: int | None
    account_id: int
    account_kind: str = Field(description="user | pool")
    tenant_id: int | None
    user_id: int | None
    amount: int
    balance_after: int | None
    actor: str | None
    reason: str | None
    reference: str | None
    approval_id: int | None = Field(default=None, description="the four-eyes approval it was applied from")
    approved_by_user_id: int | None = None
    created_at: datetime


class UsageRow(BaseModel):
    id: int
    job_id: str = Field(description="the job's public id")
    tenant_id: int
    user_id: int
    api_key_id: int | None
    operation: str
    job_status: str
    hold_id: int
    hold_status: str = Field(description="held | captured | released | expired")
    held: int
    captured: int
    released: int = Field(description="held - captured once the hold is resolved; 0 while it is held")
    capture_transaction_id: int | None
    price_version: int
    tokens_per_unit: int
    units: int
    created_at: datetime
    finished_at: datetime | None


class LedgerRow(BaseModel):
    entry_id: int
    transaction_id: int
    kind: str = Field(description="recharge | capture | adjustment | reversal | expiry")
    account_id: int
    account_kind: str = Field(description="user | pool | system")
    tenant_id: int | None
    user_id: int | None
    amount: int
    balance_after: int | None = Field(description="the account's balance after this entry (None on system accounts)")
    batch_id: int | None
    row_no: int | None
    hold_id: int | None
    reverses_transaction_id: int | None
    actor: str | None
    reason: str | None
    reference: str | None
    approval_id: int | None = Field(default=None, description="the four-eyes approval it was applied from")
    approved_by_user_id: int | None = None
    created_at: datetime
    lots: list[dict[str, Any]] | None = Field(
        default=None,
        description="on a user or pool account: the credit lots this entry wrote (a credit) or burned (a debit, "
        "negative tokens), each `lot_id`, `tokens`, `priority`, `expires_at`",
    )


class AuditRow(BaseModel):
    id: int
    occurred_at: datetime
    tenant_id: int | None
    actor_user_id: int | None
    actor_api_key_id: int | None
    action: str
    target_type: str
    target_id: str | None
    request_id: str | None
    ip: str | None
    before: Any = None
    after: Any = None


class DailyReportRow(BaseModel):
    tenant_id: int | None
    day: date
    opening: int
    recharged: int
    consumed: int
    released: int = Field(description="informational: holds do not change the balance")
    adjustments: int = Field(description="adjustments and reversals")
    expired: int = Field(description="tokens of credit lots that reached their expiry")
    closing: int = Field(description="opening + recharged - consumed + adjustments - expired")


class DailyReport(BaseModel):
    first_day: date
    last_day: date
    rows: list[DailyReportRow]


class Liability(BaseModel):
    balance: int
    held: int
    available: int


class TenantLiability(BaseModel):
    tenant_id: int | None
    users: Liability
    pool: Liability
    total: Liability


class ExpiryLiability(Liability):
    """Tokens of credit lots expiring in one UTC day or month (`expires_from` to `expires_before`), or never (both
    None). A past bucket holds tokens whose lots reached their expiry and that the sweep has not expired yet (it
    does within a sweep interval; held ones once their hold is released)."""

    expires_from: date | None
    expires_before: date | None


class LiabilityReport(BaseModel):
    at: datetime | None = Field(description="the instant asked for; None: now, from the accounts")
    users: Liability
    pool: Liability
    total: Liability
    tenants: list[TenantLiability]
    by_expiry: list[ExpiryLiability] | None = Field(
        default=None,
        description="now only: the outstanding tokens by when their credit lots expire (never first, then by "
        "`expiry_bucket`, day or month, in UTC); they add up to `total`",
    )
