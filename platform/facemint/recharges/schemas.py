from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from billing.ledger.orm import MAX_PRIORITY, MIN_PRIORITY
from facemint.balances.schemas import LotRead

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
# A credit lot's priority: lower burns first; paid recharges are 50.
Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)]
# The request fields that choose the credited tokens' lot; left out of the idempotency hash when not given, so a
# recharge without them hashes as it did before lots.
LOT_FIELDS = ("priority", "expires_at")


def _future(value: datetime) -> datetime:
    if value <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return value


FutureTime = Annotated[AwareDatetime, AfterValidator(_future)]


class RechargeCreate(BaseModel):
    """Credit one user (by `user_id` or `email`), or, for platform staff, one tenant's pool (`tenant_id`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"email": "a@b.co", "amount": 100}]})
    user_id: int | None = Field(default=None, gt=0)
    email: Annotated[str | None, StringConstraints(strip_whitespace=True, to_lower=True, max_length=320)] = None
    tenant_id: int | None = Field(default=None, gt=0)
    # Strict: JSON `true`, `1.0` or `"10"` are not token amounts (lax mode would credit `true` as 1 token).
    amount: int = Field(gt=0, strict=True, description="Whole tokens, a positive integer")
    reason: Reason
    reference: Annotated[str | None, StringConstraints(max_length=200)] = None
    priority: Priority | None = Field(
        default=None,
        description=f"The credited tokens' lot priority, {MIN_PRIORITY} to {MAX_PRIORITY}: lower is spent first "
        "(default 50, a paid recharge's)",
    )
    expires_at: FutureTime | None = Field(
        default=None,
        description="When the credited tokens expire (with a time zone, in the future); default: never. Tokens "
        "handed on from a pool keep the pool's expiry when it is sooner",
    )

    def hashed(self) -> dict[str, Any]:
        """The body as its idempotency hash, its approval and its audit event record it."""
        body = self.model_dump(mode="json")
        return {k: v for k, v in body.items() if k not in LOT_FIELDS or v is not None}

    @model_validator(mode="after")
    def _one_target(self) -> RechargeCreate:
        if sum(x is not None for x in (self.user_id, self.email, self.tenant_id)) != 1:
            raise ValueError("name exactly one of user_id, email or tenant_id")
        return self


class RechargeRead(BaseModel):
    transaction_id: int
    amount: int
    replayed: bool
    target: dict[str, Any]
    balance: int
    held: int
    available: int
    # The lots the recharge credited (from a pool: one per pool lot it drew on, with that lot's expiry if sooner).
    lots: list[LotRead] = []


class BatchFailure(BaseModel):
    row: int
    code: str
    detail: str
    email: str | None = None
    user_id: int | None = None


class BatchResult(BaseModel):
    batch_id: int | None
    transaction_id: int | None = None
    mode: str
    dry_run: bool
    rows: int
    applied: int
    total_amount: int
    failed: list[BatchFailure]
    # Four-eyes: the approval this batch was applied from, and (dry runs) whether a real run would wait for one.
    approval_id: int | None = None
    approval_required: bool | None = None


class BatchSummary(BaseModel):
    id: int
    mode: str
    tenant_id: int | None
    actor: str
    reason: str
    source_account_id: int
    row_count: int
    applied_count: int
    failed_count: int
    total_amount: int
    created_at: datetime


class BatchDetail(BatchSummary):
    result: BatchResult


class BatchRow(BaseModel):
    """A row a batch credited: `row` is its number in the file (the header aside, blank lines skipped)."""

    row: int
    user_id: int | None
    email: str | None
    amount: int
    balance_after: int
    reference: str | None
