"""Ledger tables. Rules the database enforces, whatever the code does:
- a tracked (user or pool) account's available (balance - held) never goes below zero;
- transactions and entries are append-only (triggers in the migration);
- the entries of every transaction sum to zero (statement trigger in the migration);
- a hold leaves `held` once, to exactly one outcome (trigger in the migration);
- a credit lot never holds more than it has left, nor has more left than it was credited (`credit_lots` checks);
  a hold's lot allocations and a transaction's lot consumptions are append-only (triggers in migration 0010)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
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

from billing.db import BillingBase
from billing.sealing.orm import XID8


class AccountKind(StrEnum):
    user = "user"
    tenant_pool = "tenant_pool"
    # System accounts: never updated per entry (no hot rows); their balance is the sum of their entries.
    issuance = "issuance"
    usage_revenue = "usage_revenue"
    adjustments = "adjustments"
    expired = "expired"  # where the tokens of lots that reached their expiry go


SYSTEM_KINDS = (AccountKind.issuance, AccountKind.usage_revenue, AccountKind.adjustments, AccountKind.expired)


class TransactionKind(StrEnum):
    recharge = "recharge"
    capture = "capture"
    adjustment = "adjustment"
    reversal = "reversal"
    expiry = "expiry"


class LotSource(StrEnum):
    """Where a credit lot's tokens came from."""

    recharge = "recharge"  # created by staff (from issuance)
    transfer = "transfer"  # handed on from another tracked account (a tenant's pool): mirrors the lots it burned
    grant = "grant"
    adjustment = "adjustment"
    reversal = "reversal"  # a reversal's credit: mirrors the lots the reversed transaction burned
    migration = "migration"  # each balance as it stood when lots were introduced (migration 0010)


# Lower burns first (Stripe's and OpenMeter's convention); a paid recharge is 50, so a promotion below it is spent
# before paid tokens.
MIN_PRIORITY, MAX_PRIORITY, PAID_PRIORITY = 0, 100, 50
# The order a debit burns an account's lots in: priority, soonest expiry (none last), oldest first.
BURN_ORDER = ("priority", "expires_at", "created_at", "id")


class HoldStatus(StrEnum):
    held = "held"
    captured = "captured"
    released = "released"
    expired = "expired"


class LedgerAccount(BillingBase):
    __tablename__ = "ledger_accounts"
    __table_args__ = (
        CheckConstraint("held >= 0", name="held_nonnegative"),
        CheckConstraint("NOT balance_tracked OR balance - held >= 0", name="available_nonnegative"),
        CheckConstraint("balance_tracked OR (balance = 0 AND held = 0)", name="untracked_has_no_cache"),
        CheckConstraint(
            "kind IN ('user', 'tenant_pool', 'issuance', 'usage_revenue', 'adjustments', 'expired')", name="kind"
        ),
        CheckConstraint("balance_tracked = (kind IN ('user', 'tenant_pool'))", name="tracked_by_kind"),
        Index(
            "uq_ledger_accounts_system_kind",
            "kind",
            unique=True,
            postgresql_where=text("NOT balance_tracked"),
        ),
        {"postgresql_with": {"fillfactor": "80"}},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    balance_tracked: Mapped[bool] = mapped_column(Boolean)
    balance: Mapped[int] = mapped_column(BigInteger, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, server_default="0")
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerTransaction(BillingBase):
    __tablename__ = "ledger_transactions"
    __table_args__ = (
        CheckConstraint("kind IN ('recharge', 'capture', 'adjustment', 'reversal', 'expiry')", name="kind"),
        CheckConstraint("amount > 0", name="amount_positive"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(Text, unique=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    amount: Mapped[int] = mapped_column(BigInteger)
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    actor: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    batch_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("recharge_batches.id"), index=True)
    hold_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("holds.id"), unique=True)
    reverses_transaction_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("ledger_transactions.id"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)


class LedgerEntry(BillingBase):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_nonzero"),
        Index("ix_ledger_entries_account_id_id", "account_id", "id"),
        Index("ix_ledger_entries_xid_id", "xid", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    transaction_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    # The account's balance right after this entry; NULL on untracked system accounts.
    balance_after: Mapped[int | None] = mapped_column(BigInteger)
    row_no: Mapped[int | None] = mapped_column(Integer)
    reference: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    xid: Mapped[str] = mapped_column(XID8, server_default=text("pg_current_xact_id()"))  # the sealer's (xid, id)


class Hold(BillingBase):
    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("status IN ('held', 'captured', 'released', 'expired')", name="status"),
        CheckConstraint("(status = 'captured') = (captured_amount IS NOT NULL)", name="captured_amount_iff_captured"),
        CheckConstraint("captured_amount > 0 AND captured_amount <= amount", name="captured_within_amount"),
        CheckConstraint("(status = 'held') = (resolved_at IS NULL)", name="resolved_at_iff_resolved"),
        Index("ix_holds_open_expires_at", "expires_at", postgresql_where=text("status = 'held'")),
        # The holds that let tokens go uncharged (released, expired, partly captured): the finance daily report's
        # released tokens per day. Full captures, nearly all holds, stay out of it.
        Index(
            "ix_holds_released_resolved_at",
            "resolved_at",
            postgresql_where=text("status <> 'held' AND captured_amount IS DISTINCT FROM amount"),
        ),
        # When each resolved hold held its tokens, [created_at, resolved_at): the liability report's holds open at
        # a past instant, found by containment whatever the instant. Entered on capture or release, never on the
        # reserve (an open hold is outside the predicate); greatest() keeps the range valid on every update.
        Index(
            "ix_holds_open_during",
            text("tstzrange(created_at, greatest(created_at, resolved_at), '[)')"),
            postgresql_using="gist",
            postgresql_where=text("status <> 'held'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_accounts.id"), index=True)
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text, server_default="held")
    captured_amount: Mapped[int | None] = mapped_column(BigInteger)
    # Caller's idempotency handle for the reserve (for jobs: the job id).
    reference: Mapped[str] = mapped_column(Text, unique=True)
    metadata_: Mapped[dict[str, object] | None] = mapped_column("metadata", JSONB)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CreditLot(BillingBase):
    """Which tokens of a tracked account's balance are which: every credit lands in a lot with a priority and an
    optional expiry, and every debit says which lots it burned (`LotConsumption`). The journal stays the source
    of truth: an account's lots sum to its balance (remaining) and its held tokens (held), which reconciliation
    proves. A lot is spendable from its creation (a lot is written when it takes effect); one past its expiry
    stays spendable until the sweeper expires it, and burns first meanwhile (soonest expiry first)."""

    __tablename__ = "credit_lots"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("0 <= held AND held <= remaining AND remaining <= amount", name="within_amount"),
        CheckConstraint(f"priority BETWEEN {MIN_PRIORITY} AND {MAX_PRIORITY}", name="priority_range"),
        CheckConstraint(
            "source IN ('recharge', 'transfer', 'grant', 'adjustment', 'reversal', 'migration')", name="source"
        ),
        CheckConstraint("(source = 'migration') = (transaction_id IS NULL)", name="credited_by_a_transaction"),
        CheckConstraint("effective_at <= created_at", name="effective_when_written"),
        # The burn order (ascending puts NULL, no expiry, last), over the lots with tokens left: what reserves,
        # postings and the balance views read.
        Index(
            "ix_credit_lots_burn_order",
            "account_id",
            "priority",
            "expires_at",
            "created_at",
            "id",
            postgresql_where=text("NOT spent"),
        ),
        # The expiry sweep's due lots.
        Index("ix_credit_lots_expires_at", "expires_at", postgresql_where=text("NOT spent AND expires_at IS NOT NULL")),
        # A transaction's lots on one account: an entry's lots (the finance ledger log), a reversal's original lots.
        Index("ix_credit_lots_transaction_account", "transaction_id", "account_id"),
        {"postgresql_with": {"fillfactor": "80"}},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_accounts.id"))
    tenant_id: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, server_default=str(PAID_PRIORITY))
    effective_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    held: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Nothing left (remaining = 0): what the partial indexes test instead of `remaining`, so that a capture leaving
    # tokens in the lot, which changes `remaining` but not `spent`, is a HOT update that writes no index entry.
    spent: Mapped[bool] = mapped_column(Boolean, Computed("remaining = 0", persisted=True))
    # The transaction whose credit made the lot (NULL only for the balances lots were introduced over).
    transaction_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("ledger_transactions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class HoldLotAllocation(BillingBase):
    """The lots a hold reserved its tokens from, at reserve (append-only): the lots' `held` is the sum of their
    allocations to holds still held."""

    __tablename__ = "hold_lot_allocations"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    hold_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("holds.id"), primary_key=True)
    lot_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("credit_lots.id"), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class LotConsumption(BillingBase):
    """Which lots a debit (a capture, a posting's debit leg, an expiry) burned, and how many tokens of each
    (append-only): a lot's amount less its remaining is the sum of its consumptions."""

    __tablename__ = "lot_consumptions"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    transaction_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_transactions.id"), primary_key=True)
    # The lot's account (an entry's consumptions are one index range); reconciliation checks it is the lot's.
    account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    lot_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("credit_lots.id"), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class LotEpoch(BillingBase):
    """The first journal transaction lots account for (one row, written by migration 0010): the debits and credits
    before it were posted before lots existed, and the balances they left became `migration` lots."""

    __tablename__ = "credit_lot_epoch"
    __table_args__ = (CheckConstraint("one_row", name="one_row"),)

    one_row: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    first_transaction_id: Mapped[int] = mapped_column(BigInteger)
