from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from facemint.webhooks.schemas import WebhookEventRead


def has_result(job: Any) -> bool:
    """Whether a job's result is there to download or preview: a result was settled (a success's, or the part a
    video canceled while running processed) and its files were not deleted. Expiry purges it later (then the
    download answers 410)."""
    return job.result_location is not None and job.files_deleted_at is None


def is_video(job: Any) -> bool:
    return bool((job.options or {}).get("media") == "video")


class JobError(BaseModel):
    code: str
    detail: str | None


class PriceLine(BaseModel):
    """One price book line a job is priced by, at the version it was held at."""

    operation: str
    version: int
    tokens_per_unit: int


class JobVideo(BaseModel):
    """A video target as probed before anything was held, the part of it swapped, and the seconds billed."""

    duration_seconds: float
    fps: float
    variable_frame_rate: bool
    frame_count: int
    width: int
    height: int
    rotation: int = Field(description="degrees the frames are turned for display (0, 90, 180 or 270)")
    has_audio: bool
    trim_start: float = Field(description="seconds from the start the swap begins at")
    trim_end: float = Field(description="seconds from the start the swap ends at")
    billed_seconds: int = Field(description="started seconds of trim_end - trim_start: the units held for")

    @classmethod
    def from_options(cls, options: dict[str, Any], *, units: int) -> JobVideo:
        probe, trim = options["probe"], options["trim"]
        return cls(
            duration_seconds=probe["duration_seconds"],
            fps=probe["fps"],
            variable_frame_rate=probe.get("variable_frame_rate", False),
            frame_count=probe["frame_count"],
            width=probe["width"],
            height=probe["height"],
            rotation=probe.get("rotation", 0),
            has_audio=probe.get("has_audio", False),
            trim_start=trim["start"],
            trim_end=trim["end"],
            billed_seconds=units,
        )


class JobProgress(BaseModel):
    """A video's frames swapped so far (the running attempt's; the last attempt's once finished)."""

    frames_done: int
    frames_total: int
    percent: float = Field(description="frames_done / frames_total, 0 to 100, one decimal")
    updated_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> JobProgress | None:
        if row.frames_total is None:
            return None
        done, total = row.frames_done or 0, row.frames_total
        percent = round(min(100.0, 100.0 * done / total), 1) if total > 0 else 0.0
        return cls(frames_done=done, frames_total=total, percent=percent, updated_at=row.progress_at)


class JobRead(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["job"] = "job"
    operation: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    tokens_held: int = Field(description="tokens held for this job at submit (released or captured at the end)")
    tokens_captured: int | None = Field(
        description="tokens charged: set when the job succeeded, or when a video canceled while running was "
        "charged for the seconds it processed"
    )
    price_version: int = Field(description="the first price line's version")
    tokens_per_unit: int = Field(description="the sum of the price lines' tokens per unit")
    price_lines: list[PriceLine] = Field(description="what the job is priced by, per unit (image or started second)")
    units: int = Field(description="1 for an image; a video's started seconds (trimmed)")
    processors: list[str]
    options: dict[str, Any]
    media: JobVideo | None = Field(description="a video target's probe, trim and billed seconds; null for an image")
    progress: JobProgress | None = Field(description="a video's frames done of its total; null for an image")
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
        result = has_result(row)
        return cls(
            id=row.public_id,
            operation=row.operation,
            status=row.status,
            tokens_held=row.tokens_held,
            tokens_captured=row.tokens_captured,
            price_version=row.price_version,
            tokens_per_unit=row.tokens_per_unit,
            price_lines=row.price_lines
            or [{"operation": row.operation, "version": row.price_version, "tokens_per_unit": row.tokens_per_unit}],
            units=row.units,
            processors=(row.options or {}).get("processors") or ["face_swapper"],
            options=row.options,
            media=JobVideo.from_options(row.options, units=row.units) if is_video(row) else None,
            progress=JobProgress.from_row(row),
            webhook_url=row.webhook_url,
            error=JobError(code=row.error_code, detail=row.error_detail) if row.error_code else None,
            attempts=row.attempts,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            cancel_requested_at=row.cancel_requested_at,
            timings_ms=row.timings_ms,
            result_url=f"/v1/jobs/{row.public_id}/result" if result else None,
            result_content_type=row.result_content_type if result else None,
            result_size_bytes=row.result_size_bytes if result else None,
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


# --- /admin/v1/jobs ----------------------------------------------------------------------------------------------


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds() * 1000, 1) if start is not None and end is not None else None


class JobDurations(BaseModel):
    """Milliseconds between the job's timestamps (None until both are known). `queued`: created to the last
    attempt's start; `running`: that start to the end; `total`: created to the end."""

    queued: float | None
    running: float | None
    total: float | None


class AdminJobRead(JobRead):
    """A job as staff and tenant admins see it: whose it is, where it runs, and the admin thumbnail rather than
    the owner's download."""

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
    thumbnail_url: str | None = Field(
        description="a small preview of an image result (needs jobs:admin-results); a video's has none"
    )

    @classmethod
    def from_row(cls, row: Any) -> AdminJobRead:
        # The owner's download is not offered under /admin/v1: the thumbnail is, instead.
        base = JobRead.from_row(row).model_dump(exclude={"result_url"})
        return cls(
            **base,
            result_url=None,
            tenant_id=row.tenant_id,
            user_id=row.user_id,
            user_email=row.user_email,
            api_key_id=row.api_key_id,
            queue=row.queue,
            worker_id=row.worker_id,
            max_attempts=row.max_attempts,
            dispatched_at=row.dispatched_at,
            heartbeat_at=row.heartbeat_at,
            deadline_at=row.deadline_at,
            inputs_deleted_at=row.inputs_deleted_at,
            durations_ms=JobDurations(
                queued=_ms(row.created_at, row.started_at),
                running=_ms(row.started_at, row.finished_at),
                total=_ms(row.created_at, row.finished_at),
            ),
            # A video's result has no thumbnail (the API does not decode videos to preview them).
            thumbnail_url=f"/admin/v1/jobs/{row.public_id}/thumbnail"
            if has_result(row) and not is_video(row)
            else None,
        )


class JobHoldRead(BaseModel):
    """The ledger hold behind the job: `amount` reserved at submit, then captured (`captured_amount` charged)
    or released (nothing charged) or, as a backstop, expired."""

    status: Literal["held", "captured", "released", "expired"]
    amount: int
    captured_amount: int | None
    released_amount: int = Field(description="what went back to the account: the amount, unless captured")
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None


class AdminJobDetail(AdminJobRead):
    hold: JobHoldRead
    webhooks: list[WebhookEventRead]

    @classmethod
    def from_detail(cls, row: Any, webhooks: list[WebhookEventRead]) -> AdminJobDetail:
        resolved = row.hold_status != "held"
        released = row.hold_amount - (row.hold_captured_amount or 0) if resolved else 0
        hold = JobHoldRead(
            status=row.hold_status,
            amount=row.hold_amount,
            captured_amount=row.hold_captured_amount,
            released_amount=released,
            created_at=row.hold_created_at,
            expires_at=row.hold_expires_at,
            resolved_at=row.hold_resolved_at,
        )
        return cls(**AdminJobRead.from_row(row).model_dump(), hold=hold, webhooks=webhooks)
