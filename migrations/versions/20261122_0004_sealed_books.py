"""sealed books: the writing transaction's id on entries and audit events; seals and their leaves

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 06:20:00

Every ledger entry and audit event records the id of the transaction that wrote it (`xid`, a default the write
path never sets). The sealer hashes rows whose transaction has finished (xid below the oldest running one) in
batches, in (xid, id) order, and chains the batch digests in `ledger_seals`; each sealed row's leaf hash goes to
`ledger_seal_leaves`, so verification can name the rows that changed. Both tables are append-only.

Existing rows get the migration's own transaction id (ADD COLUMN with a volatile default rewrites the table; row
triggers do not fire for a rewrite).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class XID8(sa.types.UserDefinedType):  # type: ignore[type-arg]
    """Postgres `xid8`; SQLAlchemy has no type of its own for it (billing.sealing.orm.XID8 in the ORM)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "XID8"


SEALED = ("ledger_entries", "audit_events")
SEAL_TABLES = ("ledger_seals", "ledger_seal_leaves")


def upgrade() -> None:
    for table in SEALED:
        op.add_column(
            table, sa.Column("xid", XID8(), server_default=sa.text("pg_current_xact_id()"), nullable=False)
        )
        # The sealer walks rows in (xid, id) order from its last position.
        op.create_index(f"ix_{table}_xid_id", table, ["xid", "id"], unique=False)
    op.create_table(
        "ledger_seals",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("xid_from", XID8(), nullable=False),
        sa.Column("xid_to", XID8(), nullable=False),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("n_rows", sa.BigInteger(), nullable=False),
        sa.Column("batch_root", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("stream IN ('ledger_entries', 'audit_events')", name=op.f("ck_ledger_seals_stream")),
        sa.CheckConstraint("seq > 0", name=op.f("ck_ledger_seals_seq_positive")),
        sa.CheckConstraint("n_rows > 0", name=op.f("ck_ledger_seals_n_rows_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_seals")),
        sa.UniqueConstraint("stream", "seq", name=op.f("uq_ledger_seals_stream")),
    )
    op.create_table(
        "ledger_seal_leaves",
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("row_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("leaf", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("stream", "row_id", name=op.f("pk_ledger_seal_leaves")),
    )
    for table in SEAL_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION facemint_forbid_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION facemint_forbid_change()"
        )


def downgrade() -> None:
    for table in SEAL_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    op.drop_table("ledger_seal_leaves")
    op.drop_table("ledger_seals")
    for table in SEALED:
        op.drop_index(f"ix_{table}_xid_id", table_name=table)
        op.drop_column(table, "xid")
