"""Metered jobs. A job row is written in the same transaction as its hold; its status moves
queued -> running -> succeeded | failed | canceled (running -> queued again on a bounded retry), each move a
conditional UPDATE, so settlement (capture or release) happens in exactly one of the racing transactions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_jobs_user_id_idempotency_key"),
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')", name="status"),
        CheckConstraint("tokens_held > 0 AND units > 0 AND tokens_per_unit > 0", name="amounts_positive"),
        CheckConstraint(
            "tokens_captured IS NULL OR (tokens_captured > 0 AND tokens_captured <= tokens_held)",
            name="captured_within_held",
        ),
        # A success is always charged; a charge is a success's, or a video's canceled mid-run (the seconds done).
        CheckConstraint(
            "(status <> 'succeeded' OR tokens_captured IS NOT NULL) "
            "AND (tokens_captured IS NULL OR status IN ('succeeded', 'canceled'))",
            name="captured_by_outcome",
        ),
        CheckConstraint(
            "price_lines IS NULL OR (jsonb_typeof(price_lines) = 'array' AND jsonb_array_length(price_lines) > 0)",
            name="price_lines_array",
        ),
        CheckConstraint(
            "(frames_total IS NULL OR frames_total >= 0) "
            "AND (frames_done IS NULL OR (frames_total IS NOT NULL AND frames_done BETWEEN 0 AND frames_total))",
            name="frames_within_total",
        ),
        CheckConstraint(
            "(status IN ('succeeded', 'failed', 'canceled')) = (finished_at IS NOT NULL)", name="finished_iff_terminal"
        ),
        CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts_within_budget"),
        # The sweeper and the dispatcher only ever look at live jobs.
        Index("ix_jobs_live", "status", "heartbeat_at", postgresql_where=text("status IN ('queued', 'running')")),
        Index("ix_jobs_tenant_live", "tenant_id", postgresql_where=text("status IN ('queued', 'running')")),
        Index("ix_jobs_user_id_id", "user_id", "id"),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        # The console's filters (migration 0007): by status, newest first; within a tenant or a user.
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_tenant_id_status_id", "tenant_id", "status", "id"),
        Index("ix_jobs_user_id_status_id", "user_id", "status", "id"),
        Index("ix_jobs_created_at", "created_at"),  # the dashboard's jobs per hour
        Index(
            "ix_jobs_result_expires_at",
            "result_expires_at",
            postgresql_where=text("files_deleted_at IS NULL AND result_location IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # What the API and the queue call the job: `job_` + 24 hex characters (unguessable, [A-Za-z0-9_] for RQ).
    public_id: Mapped[str] = mapped_column(Text, unique=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tenants.id"))
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    api_key_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("api_keys.id"))
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_accounts.id"))
    hold_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("holds.id"), unique=True)
    operation: Mapped[str] = mapped_column(Text)
    # The RQ queue the job goes to (and back to, when the dispatcher queues it again).
    queue: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="queued")
    idempotency_key: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    price_version: Mapped[int] = mapped_column(Integer)
    # The sum of the price lines' tokens per unit (one line: that price's; `price_version` is the first line's).
    tokens_per_unit: Mapped[int] = mapped_column(BigInteger)
    # What the job is priced by, each at the version it was held at: [{operation, version, tokens_per_unit}]
    # (migration 0008; NULL for jobs from before, priced by `operation` alone).
    price_lines: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    units: Mapped[int] = mapped_column(Integer)
    tokens_held: Mapped[int] = mapped_column(BigInteger)
    tokens_captured: Mapped[int | None] = mapped_column(BigInteger)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB)
    input_location: Mapped[str] = mapped_column(Text)
    result_location: Mapped[str | None] = mapped_column(Text)
    result_content_type: Mapped[str | None] = mapped_column(Text)
    result_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(Text)
    timings_ms: Mapped[dict[str, float] | None] = mapped_column(JSONB)
    # A video's progress, written by its worker at most about once a second (NULL for images).
    frames_done: Mapped[int | None] = mapped_column(Integer)
    frames_total: Mapped[int | None] = mapped_column(Integer)
    progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When it was last put on the queue (NULL: recorded but not queued yet; the dispatcher queues it).
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Past this the job is failed and its hold released, whatever state it is in (the documented bound).
    deadline_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    inputs_deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    files_deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
