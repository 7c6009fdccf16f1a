"""Response models of the `/admin/v1` API: tenants (and their account events), users, keys, recharges and
batches, approvals, balances and postings, prices, audit, finance logs and reports, admin job views, abuse rules
and triggers. The Zendesk connector's are in `facemint_client.zendesk_models`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from facemint_client.models import Job, WebhookEventRecord


@dataclass(frozen=True, kw_only=True, slots=True)
class Tenant:
    id: int
    name: str
    status: str  # active | suspended
    plan: str  # free | pro | enterprise
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class User:
    id: int
    tenant_id: int | None
    email: str
    name: str | None
    role: str
    status: str  # active | frozen
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiKey:
    id: int
    prefix: str
    name: str
    user_id: int
    tenant_id: int | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiKeyCreated(ApiKey):
    key: str  # shown once: store it now


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSecret:
    secret: str


@dataclass(frozen=True, kw_only=True, slots=True)
class EventsWebhook:
    """Where a tenant's account events (`balance.low`, abuse) are sent; None: nowhere."""

    url: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountEvent(WebhookEventRecord):
    """A tenant's account event (`event_type` e.g. `balance.low`), with the body sent (`payload`) and every
    delivery attempt."""

    payload: dict[str, Any] = field(default_factory=dict)


# --- money ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Recharge:
    """An applied recharge (`replayed`: this Idempotency-Key had already applied it; nothing moved twice)."""

    transaction_id: int
    amount: int
    replayed: bool
    target: dict[str, Any]
    balance: int
    held: int
    available: int


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFailure:
    row: int
    code: str
    detail: str
    email: str | None = None
    user_id: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchResult:
    """A batch as applied (or, `dry_run`, as it would be). `replayed`: an earlier call with this Idempotency-Key
    applied it."""

    batch_id: int | None
    mode: str
    dry_run: bool
    rows: int
    applied: int
    total_amount: int
    failed: list[BatchFailure] = field(default_factory=list)
    transaction_id: int | None = None
    approval_id: int | None = None
    approval_required: bool | None = None
    replayed: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchSummary:
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


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchDetail(BatchSummary):
    result: BatchResult


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchRow:
    row: int
    user_id: int | None
    email: str | None
    amount: int
    balance_after: int
    reference: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Approval:
    """A request held for a second operator (202): nothing applied until approved. `kind`: single, batch,
    adjustment, reversal or grant (a recurring grant that mints tokens); `result` is the applied outcome once
    approved."""

    id: int
    kind: str
    status: str  # pending | approved | rejected | expired
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


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalDetail(Approval):
    request: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountBalance:
    account_id: int
    kind: str
    available: int
    held: int
    balance: int
    user_id: int | None = None
    email: str | None = None
    tenant_id: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Posting:
    """An applied adjustment or reversal (`replayed` as for `Recharge`)."""

    transaction_id: int
    kind: str
    amount: int
    replayed: bool
    created_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class Price:
    operation: str
    version: int
    tokens_per_unit: int
    actor: str | None
    note: str | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEvent:
    id: int
    occurred_at: datetime
    actor_user_id: int | None
    actor_api_key_id: int | None
    tenant_id: int | None
    action: str
    target_type: str
    target_id: str | None
    request_id: str | None
    ip: str | None
    before: Any = None
    after: Any = None


# --- finance logs and reports --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RechargeLogRow:
    entry_id: int
    transaction_id: int
    batch_id: int | None
    row_no: int | None
    account_id: int
    account_kind: str
    tenant_id: int | None
    user_id: int | None
    amount: int
    balance_after: int | None
    actor: str | None
    reason: str | None
    reference: str | None
    created_at: datetime
    approval_id: int | None = None
    approved_by_user_id: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class UsageLogRow:
    id: int
    job_id: str
    tenant_id: int
    user_id: int
    api_key_id: int | None
    operation: str
    job_status: str
    hold_id: int
    hold_status: str
    held: int
    captured: int
    released: int
    capture_transaction_id: int | None
    price_version: int
    tokens_per_unit: int
    units: int
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, kw_only=True, slots=True)
class LedgerLogRow:
    entry_id: int
    transaction_id: int
    kind: str
    account_id: int
    account_kind: str
    tenant_id: int | None
    user_id: int | None
    amount: int
    balance_after: int | None
    batch_id: int | None
    row_no: int | None
    hold_id: int | None
    reverses_transaction_id: int | None
    actor: str | None
    reason: str | None
    reference: str | None
    created_at: datetime
    approval_id: int | None = None
    approved_by_user_id: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DailyReportRow:
    tenant_id: int | None
    day: date
    opening: int
    recharged: int
    consumed: int
    released: int
    adjustments: int
    closing: int


@dataclass(frozen=True, kw_only=True, slots=True)
class DailyReport:
    first_day: date
    last_day: date
    rows: list[DailyReportRow]


@dataclass(frozen=True, kw_only=True, slots=True)
class Liability:
    balance: int
    held: int
    available: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantLiability:
    tenant_id: int | None
    users: Liability
    pool: Liability
    total: Liability


@dataclass(frozen=True, kw_only=True, slots=True)
class LiabilityReport:
    at: datetime | None
    users: Liability
    pool: Liability
    total: Liability
    tenants: list[TenantLiability]


@dataclass(frozen=True, kw_only=True, slots=True)
class Discrepancy:
    check: str
    description: str
    ids: list[Any]
    details: list[Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Reconciliation:
    balanced: bool
    checks: list[str]
    totals: dict[str, int]
    discrepancies: list[Discrepancy]


@dataclass(frozen=True, kw_only=True, slots=True)
class ReconciliationRun:
    id: int
    ran_at: datetime
    balanced: bool
    discrepancies: int
    summary: dict[str, Any]
    requested_by: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamSeal:
    stream: str
    seq: int
    sealed_at: datetime
    last_id: int
    seals: int
    rows: int
    hash: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SealRun:
    sealed: dict[str, int]
    batches: int
    caught_up: bool
    streams: list[StreamSeal]


@dataclass(frozen=True, kw_only=True, slots=True)
class Dashboard:
    """The console's dashboard figures; `charts` as the API sends it (days, hours, top tenants)."""

    charts: dict[str, Any]
    tenant_id: int | None
    tokens_held: int
    jobs_queued: int
    jobs_running: int
    queue_length: int | None
    webhook_backlog: int
    webhook_oldest_due: datetime | None
    last_reconciliation: ReconciliationRun | None
    sealed_books: list[StreamSeal] | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ExportInfo:
    """A finance export written out: its rows and snapshot instant (the server's `X-Export-*` headers)."""

    rows: int | None
    as_of: str | None
    bytes: int


# --- admin job views -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class JobDurations:
    queued: float | None
    running: float | None
    total: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobHold:
    status: str  # held | captured | released | expired
    amount: int
    captured_amount: int | None
    released_amount: int
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminJob(Job):
    tenant_id: int
    user_id: int
    user_email: str
    api_key_id: int | None
    queue: str
    worker_id: str | None
    max_attempts: int
    dispatched_at: datetime | None
    heartbeat_at: datetime | None
    deadline_at: datetime
    inputs_deleted_at: datetime | None
    durations_ms: JobDurations
    thumbnail_url: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminJobDetail(AdminJob):
    hold: JobHold
    webhooks: list[WebhookEventRecord]


# --- abuse ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class AbuseRule:
    """A tenant's abuse rule. `kind`: `jobs_per_window` or `same_face_per_window` (with `max_jobs`), or
    `spend_rate` (with `multiple`, `baseline_hours` and `min_tokens`); `action`: `flag` or `freeze`."""

    id: int
    tenant_id: int
    kind: str
    action: str
    enabled: bool
    window_seconds: int
    max_jobs: int | None
    multiple: float | None
    baseline_hours: int | None
    min_tokens: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class AbuseTrigger:
    """What a rule caught: the user, the window and what was counted (`observed`); `open` until resolved (`note`,
    and `unfroze` when resolving it unfroze the user)."""

    id: int
    tenant_id: int
    rule_id: int
    user_id: int
    kind: str
    action: str
    window_start: datetime
    window_seconds: int
    generation: int
    observed: dict[str, Any]
    job_public_id: str | None
    status: str  # open | resolved
    resolved_by_user_id: int | None
    resolved_at: datetime | None
    note: str | None
    unfroze: bool
    created_at: datetime
