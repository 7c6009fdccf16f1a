"""Response models of the `/admin/v1` API: tenants (and their account events), users, keys, recharges and
batches, approvals, balances and postings, recurring grants and their periods, prices, audit, finance logs and
reports, admin job views, abuse rules and triggers. The Zendesk connector's are in
`facemint_client.zendesk_models`; credit lots (`Lot`, `NextExpiry`) in `facemint_client.models`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from facemint_client.models import Job, Lot, NextExpiry, WebhookEventRecord


@dataclass(frozen=True, kw_only=True, slots=True)
class Tenant:
    id: int
    name: str
    status: str  # active | suspended
    plan: str  # free | pro | enterprise
    created_at: datetime
    updated_at: datetime
    events_webhook_url: str | None = None  # where its account events go (low balance, abuse)


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
    labels: list[str] = field(default_factory=list)  # lower-cased; what a tenant's grants may select on


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


# --- money ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Recharge:
    """An applied recharge (`replayed`: this Idempotency-Key had already applied it; nothing moved twice) and
    the credit lots it wrote (more than one when a pool handed on lots of its own)."""

    transaction_id: int
    amount: int
    replayed: bool
    target: dict[str, Any]
    balance: int
    held: int
    available: int
    lots: list[Lot] = field(default_factory=list)


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

    @property
    def grant_id(self) -> int | None:
        """The grant an approved `grant` request made or changed (`result["grant_id"]`); None otherwise."""
        value = (self.result or {}).get("grant_id") if self.kind == "grant" else None
        return value if isinstance(value, int) else None


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalDetail(Approval):
    request: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountBalance:
    """A user's or a tenant pool's balance (`kind`), with its lots and next expiry as on `Balance`."""

    account_id: int
    kind: str
    available: int
    held: int
    balance: int
    user_id: int | None = None
    email: str | None = None
    tenant_id: int | None = None
    lots: list[Lot] = field(default_factory=list)
    next_expiry: NextExpiry | None = None


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


# --- recurring grants ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Grant:
    """A recurring credit grant: `amount` tokens each UTC `period` (day, week, month) to every eligible account,
    in lots of `priority` expiring at the period's end. `scope` `plan`: every user on `plan` (platform-funded);
    `tenant`: the users of `tenant_id`, only those carrying `label` when set, `funding` `platform` (minted) or
    `tenant_pool` (paid from the tenant's pool). `approval_id`: the approval whose terms it last took."""

    id: int
    name: str
    scope: str  # plan | tenant
    plan: str | None
    tenant_id: int | None
    label: str | None
    amount: int
    period: str  # day | week | month
    priority: int
    funding: str  # platform | tenant_pool
    enabled: bool
    starts_at: datetime
    ends_at: datetime | None
    created_by: str | None
    approval_id: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class GrantPeriod:
    """One period of a grant as the workers left it: the accounts and tokens granted, and the last shortfall of a
    pool-funded run the pool could not pay (`shortfall_needed` tokens against `shortfall_available`; None once a
    run succeeds)."""

    id: int
    grant_id: int
    period_start: datetime
    period_end: datetime
    granted_accounts: int
    granted_tokens: int
    shortfall_needed: int | None
    shortfall_available: int | None
    shortfall_at: datetime | None
    updated_at: datetime


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
    # On a user or pool account: the lots this entry wrote (a credit) or burned (a debit, negative `tokens`), each
    # as the API sends it: `lot_id`, `tokens`, `priority`, `expires_at` (ISO 8601 or None).
    lots: list[dict[str, Any]] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DailyReportRow:
    """One tenant's UTC day: opening + recharged - consumed + adjustments - expired = closing (`released` is
    informational: holds do not change the balance)."""

    tenant_id: int | None
    day: date
    opening: int
    recharged: int
    consumed: int
    released: int
    adjustments: int
    expired: int
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
class ExpiryLiability(Liability):
    """Outstanding tokens whose lots expire in one UTC day or month, `expires_from` (included) to
    `expires_before`, or never (both None)."""

    expires_from: date | None
    expires_before: date | None


@dataclass(frozen=True, kw_only=True, slots=True)
class LiabilityReport:
    """Tokens outstanding; `by_expiry` (a report of now only, else None) splits `total` by when their lots expire:
    never first, then per day or month (`expiry_bucket`)."""

    at: datetime | None
    users: Liability
    pool: Liability
    total: Liability
    tenants: list[TenantLiability]
    by_expiry: list[ExpiryLiability] | None = None


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
