from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Identity, Integer, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


class ReconciliationRun(Base):
    """One reconciliation that ran (the CLI, the console's button, the API): the dashboard shows the last one.
    Append-only for the service."""

    __tablename__ = "reconciliation_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    balanced: Mapped[bool] = mapped_column(Boolean)
    discrepancies: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONB)
    requested_by: Mapped[str | None] = mapped_column(Text)
