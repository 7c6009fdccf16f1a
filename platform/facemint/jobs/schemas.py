from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobError(BaseModel):
    code: str
    detail: str | None


class JobRead(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["job"] = "job"
    operation: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    tokens_held: int = Field(description="tokens held for this job at submit (released or captured at the end)")
    tokens_captured: int | None = Field(description="tokens charged; set only when the job succeeded")
    price_version: int
    tokens_per_unit: int
    units: int
    options: dict[str, Any]
    webhook_url: str | None
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    timings_ms: dict[str, float] | None
    result_url: str | None = Field(description="where to download the output while it is kept")
    result_content_type: str | None
    result_size_bytes: int | None
    result_expires_at: datetime | None
    files_deleted_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> JobRead:
        has_result = row.status == "succeeded" and row.files_deleted_at is None and row.result_location is not None
        return cls(
            id=row.public_id,
            operation=row.operation,
            status=row.status,
            tokens_held=row.tokens_held,
            tokens_captured=row.tokens_captured,
            price_version=row.price_version,
            tokens_per_unit=row.tokens_per_unit,
            units=row.units,
            options=row.options,
            webhook_url=row.webhook_url,
            error=JobError(code=row.error_code, detail=row.error_detail) if row.error_code else None,
            attempts=row.attempts,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            cancel_requested_at=row.cancel_requested_at,
            timings_ms=row.timings_ms,
            result_url=f"/v1/jobs/{row.public_id}/result" if has_result else None,
            result_content_type=row.result_content_type if has_result else None,
            result_size_bytes=row.result_size_bytes if has_result else None,
            result_expires_at=row.result_expires_at,
            files_deleted_at=row.files_deleted_at,
        )


class UsageRow(BaseModel):
    day: date
    operation: str
    jobs: int
    tokens: int


class UsageRead(BaseModel):
    start: date
    end: date
    total_tokens: int
    items: list[UsageRow]


class PriceRead(BaseModel):
    operation: str
    version: int
    tokens_per_unit: int
    actor: str | None
    note: str | None
    created_at: datetime


class PriceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: str = Field(min_length=3, max_length=100)
    tokens_per_unit: int = Field(ge=1, le=1_000_000)
    note: str | None = Field(default=None, max_length=500)
