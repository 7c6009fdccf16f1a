from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field


class DiscrepancyRead(BaseModel):
    check: str
    description: str
    ids: list[Any]
    details: list[Any]


class ReconciliationRead(BaseModel):
    balanced: bool
    checks: list[str]
    totals: dict[str, int]
    discrepancies: list[DiscrepancyRead]


class ReconciliationRunRead(BaseModel):
    id: int
    ran_at: datetime
    balanced: bool
    discrepancies: int
    summary: dict[str, Any] = Field(description="checks, totals, and each discrepancy with its first ids")
    requested_by: str | None = Field(description="`user:ID`, `key:ID`, or `cli`")


class StreamSealRead(BaseModel):
    stream: str
    seq: int = Field(description="the newest seal's number in its stream's chain")
    sealed_at: datetime
    last_id: int = Field(description="the last row the newest seal covers")
    seals: int
    rows: int = Field(description="rows sealed in all")
    hash: str


class SealRunRead(BaseModel):
    sealed: dict[str, int] = Field(description="rows sealed now, per stream")
    batches: int
    caught_up: bool = Field(description="false: more was waiting than one request seals; the workers seal the rest")
    streams: list[StreamSealRead]


# --- the dashboard -----------------------------------------------------------------------------------------


class DayTokens(BaseModel):
    day: date = Field(description="a day in the asked zone")
    start: datetime = Field(description="the day's first instant (UTC)")
    recharged: int = Field(description="tokens credited to user and pool accounts by recharges (transfers net out)")
    consumed: int = Field(description="tokens charged for jobs (captures)")


class HourJobs(BaseModel):
    start: datetime = Field(description="the hour's first instant (UTC)")
    counts: dict[str, int] = Field(description="jobs submitted in that hour, by their status now")


class TenantConsumption(BaseModel):
    tenant_id: int
    name: str
    consumed: int


class DashboardCharts(BaseModel):
    """The aggregates over the last 30 days and 48 hours (cached briefly: see `dashboard.CHARTS_CACHE_SECONDS`)."""

    zone: str
    as_of: datetime
    days: list[DayTokens]
    hours: list[HourJobs]
    statuses: list[str]
    top_tenants: list[TenantConsumption] = Field(description="by tokens consumed in the 30 days (staff only)")


class DashboardRead(BaseModel):
    charts: DashboardCharts
    tenant_id: int | None = Field(description="the tenant these figures are limited to (None: every tenant)")
    tokens_held: int = Field(description="tokens in open holds now")
    jobs_queued: int
    jobs_running: int
    queue_length: int | None = Field(description="entries on the job queue in Redis (staff only: it is shared)")
    webhook_backlog: int = Field(description="webhook events waiting to be delivered")
    webhook_oldest_due: datetime | None
    last_reconciliation: ReconciliationRunRead | None = Field(description="staff only")
    sealed_books: list[StreamSealRead] | None = Field(description="staff only")
