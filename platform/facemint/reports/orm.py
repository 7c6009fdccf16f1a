"""The record of each reconciliation run (the CLI's, the console's button, the API's): append-only for the
service's role (`facemint.migrate.TABLE_PRIVILEGES`); the dashboard shows the newest."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Identity, Integer, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


class ReconciliationRun(Base):
    __tablename__ = "reconciliation_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    balanced: Mapped[bool] = mapped_column(Boolean)
    discrepancies: Mapped[int] = mapped_column(Integer)
    # The checks run, the totals, and each failed check's name with its first ids (never the whole list).
    summary: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The principal's label (`user:12`, `key:3`), or `cli` for `facemint reconcile`.
    requested_by: Mapped[str | None] = mapped_column(Text)
