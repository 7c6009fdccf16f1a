from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, func
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import BillingBase


class GrantAward(BillingBase):
    """One account's grant for one period, written in the transaction that credits it (append-only). Its primary
    key is the idempotency of recurring grants: a second credit of the same (grant, period, account), by a rerun,
    a late run or a second worker at the same moment, is refused by the database and rolls back whole."""

    __tablename__ = "grant_awards"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    # The service's grant (`credit_grants`): billing knows grants by id only, as holds know jobs by reference.
    grant_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_accounts.id"), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    transaction_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_transactions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
