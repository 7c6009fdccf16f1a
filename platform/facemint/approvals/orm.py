"""Four-eyes approvals of held requests (recharges, batches, adjustments, reversals, recurring grants). Rules the
database enforces (migrations 0005, 0006 and 0016), whatever the code does:
- an approval leaves `pending` once, to exactly one outcome, and only its outcome columns change then;
- nobody approves their own request, and nothing is approved at or after `expires_at`;
- approvals are never deleted."""

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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


class ApprovalKind(StrEnum):
    single = "single"
    batch = "batch"
    adjustment = "adjustment"
    reversal = "reversal"
    grant = "grant"  # a recurring grant's creation or change (`facemint.grants.approving`)


class ApprovalStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    expired = "expired"


class RechargeApproval(Base):
    """A request held for a second operator. `payload` is everything needed to apply it later exactly as it was
    requested (and `held_because`, the policy's reason); `result` (and `transaction_id` / `batch_id`) what applying
    it produced. `total_amount` is the tokens it moves (an adjustment's magnitude; a grant's: one period's at the
    accounts eligible when it was asked, `row_count`)."""

    __tablename__ = "recharge_approvals"
    __table_args__ = (
        CheckConstraint("kind IN ('single', 'batch', 'adjustment', 'reversal', 'grant')", name="kind"),
        CheckConstraint("status IN ('pending', 'approved', 'rejected', 'expired')", name="status"),
        # A grant's is one period's mint at the accounts eligible when it was asked: none yet is a real answer.
        CheckConstraint(
            "(total_amount > 0 AND row_count > 0) OR (kind = 'grant' AND total_amount >= 0 AND row_count >= 0)",
            name="amounts_positive",
        ),
        CheckConstraint(
            "(status = 'pending' AND decided_at IS NULL AND decided_by_user_id IS NULL)"
            " OR (status = 'expired' AND decided_at IS NOT NULL AND decided_by_user_id IS NULL)"
            " OR (status IN ('approved', 'rejected') AND decided_at IS NOT NULL AND decided_by_user_id IS NOT NULL)",
            name="decision_matches_status",
        ),
        CheckConstraint("status <> 'approved' OR decided_by_user_id <> requested_by_user_id", name="four_eyes"),
        Index("ix_recharge_approvals_tenant_id_id", "tenant_id", "id"),
        Index("ix_recharge_approvals_status_expires_at", "status", "expires_at"),
        # The recharge and ledger logs join each entry's transaction and batch to the approval that applied it.
        Index(
            "ix_recharge_approvals_transaction_id",
            "transaction_id",
            postgresql_where=text("transaction_id IS NOT NULL"),
        ),
        Index("ix_recharge_approvals_batch_id", "batch_id", postgresql_where=text("batch_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=ApprovalStatus.pending.value)
    tenant_id: Mapped[int | None] = mapped_column(BigInteger)
    requested_by_user_id: Mapped[int] = mapped_column(BigInteger)
    requested_by_api_key_id: Mapped[int | None] = mapped_column(BigInteger)
    idempotency_key: Mapped[str] = mapped_column(Text, unique=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    total_amount: Mapped[int] = mapped_column(BigInteger)
    row_count: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_by_user_id: Mapped[int | None] = mapped_column(BigInteger)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decision_note: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The recharge the approval produced, as foreign keys so the recharge log can join on them.
    transaction_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("ledger_transactions.id"))
    batch_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("recharge_batches.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
