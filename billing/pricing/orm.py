"""The price book: tokens per unit of each metered operation, versioned. A price is never edited: a change is a
new version, so every job can name the exact price it was held and charged at."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Identity, Integer, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import BillingBase


class Price(BillingBase):
    __tablename__ = "prices"
    __table_args__ = (
        UniqueConstraint("operation", "version", name="uq_prices_operation_version"),
        CheckConstraint("tokens_per_unit > 0", name="tokens_per_unit_positive"),
        CheckConstraint("version > 0", name="version_positive"),
        CheckConstraint("operation ~ '^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$'", name="operation_format"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    operation: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    tokens_per_unit: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
