"""Sealed books: the sealer's tables (both append-only by trigger, see migration 0004).

- `ledger_seals`: one row per sealed batch of a stream (`ledger_entries` or `audit_events`). A batch is every row
  whose position `(xid, id)` lies in `[(xid_from, first_id), (xid_to, last_id)]`; batches of a stream follow
  each other without gaps in that order. `hash = sha256(prev_hash || batch_root || header)` chains them.
- `ledger_seal_leaves`: each sealed row's leaf hash, so that `verify` can name the rows that changed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    LargeBinary,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from billing.db import BillingBase

STREAMS = ("ledger_entries", "audit_events")


class XID8(UserDefinedType[str]):
    """Postgres `xid8` (a 64-bit transaction id); values travel as their decimal text."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "XID8"


# Reflection (Alembic's drift check) then knows the type instead of warning and comparing nothing.
ischema_names.setdefault("xid8", XID8)


class LedgerSeal(BillingBase):
    __tablename__ = "ledger_seals"
    __table_args__ = (
        UniqueConstraint("stream", "seq"),
        CheckConstraint("stream IN ('ledger_entries', 'audit_events')", name="stream"),
        CheckConstraint("seq > 0", name="seq_positive"),
        CheckConstraint("n_rows > 0", name="n_rows_positive"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    stream: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger)
    # The batch's first and last row, in (xid, id) order.
    xid_from: Mapped[str] = mapped_column(XID8)
    xid_to: Mapped[str] = mapped_column(XID8)
    first_id: Mapped[int] = mapped_column(BigInteger)
    last_id: Mapped[int] = mapped_column(BigInteger)
    n_rows: Mapped[int] = mapped_column(BigInteger)
    batch_root: Mapped[bytes] = mapped_column(LargeBinary)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerSealLeaf(BillingBase):
    __tablename__ = "ledger_seal_leaves"
    __table_args__ = (PrimaryKeyConstraint("stream", "row_id"),)

    stream: Mapped[str] = mapped_column(Text)
    row_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    leaf: Mapped[bytes] = mapped_column(LargeBinary)
