"""Low-balance alerts: one row per ledger account (a user's or a tenant's pool) that has or had one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, func, text
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


class BalanceAlert(Base):
    """Armed, it fires once when the account's available tokens (balance - held) drop below `threshold`, and
    disarms in the same statement; disarmed, it re-arms once available reaches `threshold + hysteresis`
    (facemint.balance_alerts.evaluation). A removed alert keeps its row (`removed_at`) and is never evaluated."""

    __tablename__ = "balance_alerts"
    __table_args__ = (
        CheckConstraint("threshold > 0", name="threshold_positive"),
        CheckConstraint("hysteresis >= 0", name="hysteresis_nonnegative"),
    )

    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_accounts.id"), primary_key=True)
    threshold: Mapped[int] = mapped_column(BigInteger)
    hysteresis: Mapped[int] = mapped_column(BigInteger)
    armed: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rearmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
