"""Abuse rules and the triggers they raise (migration 0014). Rules the database enforces, whatever the code does:
each kind has exactly its own parameters within bounds; a trigger is recorded once per rule, user, window and
counter generation,
is resolved once (only its outcome columns change then) and is never deleted; rules are retired, not deleted."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


class RuleKind(StrEnum):
    jobs_per_window = "jobs_per_window"  # more than `max_jobs` submits in a window
    same_face_per_window = "same_face_per_window"  # more than `max_jobs` jobs with one source face in a window
    spend_rate = "spend_rate"  # tokens in a window above `multiple` x the account's own recent rate


class RuleAction(StrEnum):
    flag = "flag"  # recorded for review; the job goes ahead
    freeze = "freeze"  # the user is frozen, this job refused (or stopped) and its queued jobs released


class TriggerStatus(StrEnum):
    open = "open"
    resolved = "resolved"


COUNT_KINDS = (RuleKind.jobs_per_window, RuleKind.same_face_per_window)


class AbuseRule(Base):
    __tablename__ = "abuse_rules"
    __table_args__ = (
        CheckConstraint("kind IN ('jobs_per_window', 'same_face_per_window', 'spend_rate')", name="kind"),
        CheckConstraint("action IN ('flag', 'freeze')", name="action"),
        CheckConstraint("window_seconds BETWEEN 1 AND 86400", name="window"),
        CheckConstraint(
            "(kind IN ('jobs_per_window', 'same_face_per_window') AND max_jobs >= 1 AND multiple IS NULL"
            " AND baseline_hours IS NULL AND min_tokens IS NULL)"
            " OR (kind = 'spend_rate' AND max_jobs IS NULL AND multiple > 1 AND baseline_hours BETWEEN 1 AND 168"
            " AND min_tokens >= 0 AND window_seconds <= baseline_hours * 3600)",
            name="parameters",
        ),
        # A tenant's live rules: what the Redis mirror is loaded from.
        Index("ix_abuse_rules_tenant_id_live", "tenant_id", "id", postgresql_where=text("deleted_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    window_seconds: Mapped[int] = mapped_column(Integer)
    max_jobs: Mapped[int | None] = mapped_column(Integer)  # the count kinds
    multiple: Mapped[float | None] = mapped_column(Double)  # spend_rate: how many times the baseline rate
    baseline_hours: Mapped[int | None] = mapped_column(Integer)  # spend_rate: the hours the baseline is taken over
    min_tokens: Mapped[int | None] = mapped_column(BigInteger)  # spend_rate: a window at or below never triggers
    created_by_user_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AbuseTrigger(Base):
    """What a rule caught: the rule's kind and action as they were, the window (fixed, `window_start` +
    `window_seconds`), what was observed (counts, tokens, the limit they passed), and the review's outcome."""

    __tablename__ = "abuse_triggers"
    __table_args__ = (
        CheckConstraint("action IN ('flag', 'freeze')", name="action"),
        CheckConstraint("status IN ('open', 'resolved')", name="status"),
        CheckConstraint(
            "(status = 'open' AND resolved_at IS NULL AND resolved_by_user_id IS NULL AND NOT unfroze)"
            " OR (status = 'resolved' AND resolved_at IS NOT NULL AND resolved_by_user_id IS NOT NULL)",
            name="resolution_matches_status",
        ),
        UniqueConstraint("rule_id", "user_id", "window_start", "generation", name="uq_abuse_triggers_once_per_window"),
        Index("ix_abuse_triggers_tenant_id_id", "tenant_id", "id"),
        Index("ix_abuse_triggers_status_id", "status", "id"),
        Index("ix_abuse_triggers_user_id_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tenants.id"))
    rule_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("abuse_rules.id"))
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_seconds: Mapped[int] = mapped_column(Integer)
    # The user's counter generation (facemint.abuse.counters): an unfreeze starts a new one, so a trigger after it
    # in the same window is a new trigger.
    generation: Mapped[int] = mapped_column(Integer, server_default="0")
    observed: Mapped[dict[str, Any]] = mapped_column(JSONB)
    job_public_id: Mapped[str | None] = mapped_column(Text)  # the job whose submit (or run) tripped the rule
    status: Mapped[str] = mapped_column(Text, server_default=TriggerStatus.open.value)
    resolved_by_user_id: Mapped[int | None] = mapped_column(BigInteger)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(Text)
    unfroze: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))  # the resolve unfroze the user
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
