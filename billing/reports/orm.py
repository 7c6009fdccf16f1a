"""The journal's rollup: per time bucket (15 minutes, or a UTC day), tenant, account kind and transaction kind, the
sum and count of the sealed ledger entries (billing.reports.rollup). Only the sealer writes it, in the transaction
that seals the rows it adds (an upsert, so READ_WRITE for the service's role); reconciliation checks it against the
journal."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, PrimaryKeyConstraint, Text
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import BillingBase


class LedgerRollup(BillingBase):
    __tablename__ = "ledger_rollups"
    __table_args__ = (
        # Tenant first: one tenant's days are one index range (and so are every tenant's, EVERY_TENANT's); with
        # the amount, the reports read the index alone.
        PrimaryKeyConstraint(
            "span", "tenant_id", "bucket", "account_kind", "transaction_kind", postgresql_include=["amount"]
        ),
        CheckConstraint("span IN ('15 minutes', '1 day')", name="span"),
        CheckConstraint("tenant_id >= 0 OR (tenant_id = -1 AND span = '15 minutes')", name="tenant_id"),
    )

    # The bucket's width: date_bin(span, created_at, 'epoch') is `bucket`.
    span: Mapped[str] = mapped_column(Text)
    # The account's tenant; 0 for accounts without one (staff users, system accounts); -1: every account summed
    # (15-minute rows only).
    tenant_id: Mapped[int] = mapped_column(BigInteger)
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    account_kind: Mapped[str] = mapped_column(Text)
    transaction_kind: Mapped[str] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    entries: Mapped[int] = mapped_column(BigInteger)
