"""Response models of the `/v1` API and what every client shares (pages, access tokens, webhook deliveries).
Plain frozen dataclasses, built from JSON by `facemint_client._convert` (members a newer server adds are ignored)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: newest first, `next_cursor` None on the last page."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessToken:
    access_token: str
    token_type: str
    expires_in: int


# --- account -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Lot:
    """A credit lot: tokens credited together (`source`: recharge, grant, transfer from a pool, adjustment,
    reversal, migration), spent in the burn order: lowest `priority` first, then the soonest `expires_at` (none
    last), then the oldest. `remaining` tokens are left of `amount`, `held` of them by running jobs."""

    id: int
    source: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    amount: int
    remaining: int
    held: int

    @property
    def available(self) -> int:
        return self.remaining - self.held


@dataclass(frozen=True, kw_only=True, slots=True)
class NextExpiry:
    """The soonest expiry among an account's lots with tokens left, and the tokens that expire then unless spent
    first."""

    expires_at: datetime
    amount: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Balance:
    """An account's tokens: `available` to spend, `held` by running jobs, `balance` in all; `lots` with tokens
    left, in the order they are spent (the first 50), and the `next_expiry` (None: nothing expires)."""

    available: int
    held: int
    balance: int
    lots: list[Lot] = field(default_factory=list)
    next_expiry: NextExpiry | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LedgerEntry:
    id: int
    transaction_id: int
    kind: str
    amount: int
    balance_after: int | None
    reason: str | None
    reference: str | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class UsageRow:
    day: date
    operation: str
    jobs: int
    tokens: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    start: date
    end: date
    total_tokens: int
    items: list[UsageRow]


@dataclass(frozen=True, kw_only=True, slots=True)
class BalanceAlert:
    """A low-balance alert on an account (`account`: `user` or `tenant_pool`): the tenant's events URL gets one
    `balance.low` event when `available` drops below `threshold`, and another only after it is back at `rearm_at`
    (`threshold + hysteresis`). `armed` is False from the alert that fired until then."""

    account: str
    user_id: int | None
    tenant_id: int | None
    threshold: int
    hysteresis: int
    rearm_at: int
    armed: bool
    available: int
    fired_at: datetime | None
    rearmed_at: datetime | None
    created_at: datetime
    updated_at: datetime


# --- jobs ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class JobError:
    code: str
    detail: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceLine:
    operation: str
    version: int
    tokens_per_unit: int


@dataclass(frozen=True, kw_only=True, slots=True)
class JobVideo:
    """A video target as probed at submit, the part swapped and the seconds billed."""

    duration_seconds: float
    fps: float
    variable_frame_rate: bool
    frame_count: int
    width: int
    height: int
    rotation: int
    has_audio: bool
    trim_start: float
    trim_end: float
    billed_seconds: int


@dataclass(frozen=True, kw_only=True, slots=True)
class JobProgress:
    frames_done: int
    frames_total: int
    percent: float
    updated_at: datetime | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    id: str
    operation: str
    status: JobStatus
    tokens_held: int
    tokens_captured: int | None
    price_version: int
    tokens_per_unit: int
    price_lines: list[PriceLine]
    units: int
    processors: list[str]
    options: dict[str, Any]
    media: JobVideo | None
    progress: JobProgress | None
    webhook_url: str | None
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    timings_ms: dict[str, float] | None
    result_url: str | None
    result_content_type: str | None
    result_size_bytes: int | None
    result_expires_at: datetime | None
    files_deleted_at: datetime | None
    object: str = "job"

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookDelivery:
    attempt: int
    response_status: int | None
    error: str | None
    duration_ms: float | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookEventRecord:
    """A webhook event as the API lists it for a job: its `webhook-id` (`id`) and every delivery attempt."""

    id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    deliveries: list[WebhookDelivery] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)  # the body sent (or to be sent)


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookEvent:
    """A verified webhook as received (`verify_webhook`): `id` is its `webhook-id` (deduplicate on it), `type`
    e.g. `job.succeeded`, `data` the payload's data (for job events, the job: also parsed as `job`)."""

    id: str
    type: str
    timestamp: str | None
    data: dict[str, Any]
    job: Job | None
