"""console: TOTP second factors, reconciliation runs, the journal's rollup, and the indexes the console reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The journal's rollup of every entry sealed so far: billing.reports.rollup's three sets of rows (per 15 minutes and
# tenant, per 15 minutes for every account, per UTC day and tenant) over the sealed prefix of the ledger stream.
ROLLUP_SEALED_SQL = """
INSERT INTO ledger_rollups (span, tenant_id, bucket, account_kind, transaction_kind, amount, entries)
SELECT CASE WHEN grouping(k.day) = 0 THEN '1 day' ELSE '15 minutes' END, CASE WHEN grouping(k.tenant_id) = 1
       THEN -1 ELSE k.tenant_id END, coalesce(k.day, k.quarter), k.account_kind, k.transaction_kind, sum(k.amount),
       count(*)
FROM (
    SELECT date_bin('15 minutes', e.created_at, TIMESTAMPTZ 'epoch') AS quarter,
           date_bin('1 day', e.created_at, TIMESTAMPTZ 'epoch') AS day, coalesce(a.tenant_id, 0) AS tenant_id,
           a.kind AS account_kind, t.kind AS transaction_kind, e.amount
    FROM ledger_entries e
    JOIN ledger_accounts a ON a.id = e.account_id
    JOIN ledger_transactions t ON t.id = e.transaction_id
    JOIN (SELECT xid_to, last_id FROM ledger_seals WHERE stream = 'ledger_entries' ORDER BY seq DESC LIMIT 1) h
      ON (e.xid, e.id) <= (h.xid_to, h.last_id)
) k
GROUP BY GROUPING SETS ((k.quarter, k.tenant_id, k.account_kind, k.transaction_kind),
                        (k.quarter, k.account_kind, k.transaction_kind),
                        (k.day, k.tenant_id, k.account_kind, k.transaction_kind))
"""


def upgrade() -> None:
    # A user's TOTP secret (RFC 6238, base32) once enrolled; signing in to the console and approving then need a
    # current code.
    op.add_column("users", sa.Column("totp_secret", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("totp_enrolled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(
        op.f("ck_users_totp_enrolled"), "users", "(totp_secret IS NULL) = (totp_enrolled_at IS NULL)"
    )
    # Each reconciliation that ran (the CLI, the console's button, the sweeper): the dashboard shows the last one.
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column("ran_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("balanced", sa.Boolean(), nullable=False),
        sa.Column("discrepancies", sa.Integer(), nullable=False),
        sa.Column("summary", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=True),
    )
    # The console's job filters, each index-backed newest first (status alone, within a tenant, within a user).
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_index("ix_jobs_tenant_id_status_id", "jobs", ["tenant_id", "status", "id"])
    op.create_index("ix_jobs_user_id_status_id", "jobs", ["user_id", "status", "id"])
    # The dashboard's jobs per hour over the last 48 hours.
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    # The console's user search by the start of an email: LIKE 'prefix%' needs the pattern operator class (the
    # unique index on email follows the database's collation, which LIKE cannot use unless it is C).
    op.create_index("ix_users_email_pattern", "users", ["email"], postgresql_ops={"email": "text_pattern_ops"})
    # The service's privileges on it are facemint.migrate.TABLE_PRIVILEGES' (append-only), granted after upgrade.
    # The journal's rollup (billing.reports.rollup): sealed entries summed per bucket (15 minutes, or a UTC day),
    # tenant (0: none; -1: every account), account kind and transaction kind. The sealer upserts it with each batch
    # it seals (READ_WRITE for the service), so the reports read the rollup instead of the journal.
    op.create_table(
        "ledger_rollups",
        sa.Column("span", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_kind", sa.Text(), nullable=False),
        sa.Column("transaction_kind", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("span IN ('15 minutes', '1 day')", name=op.f("ck_ledger_rollups_span")),
        sa.CheckConstraint(
            "tenant_id >= 0 OR (tenant_id = -1 AND span = '15 minutes')", name=op.f("ck_ledger_rollups_tenant_id")
        ),
        # Tenant first: one tenant's days are one index range; with the amount, reports read the index alone.
        sa.PrimaryKeyConstraint(
            "span",
            "tenant_id",
            "bucket",
            "account_kind",
            "transaction_kind",
            name=op.f("pk_ledger_rollups"),
            postgresql_include=["amount"],
        ),
    )
    # What is already sealed, rolled up once, behind the sealers' lock (billing.sealing.service.SEALER_LOCK,
    # 0x7365616C): no sealer can seal a batch between this sum and the head it is taken up to.
    op.execute("SELECT pg_advisory_xact_lock(1936023916)")
    op.execute(ROLLUP_SEALED_SQL)
    # The finance daily report's released tokens: only the holds that let tokens go uncharged (released, expired,
    # partly captured); full captures, nearly every hold, never enter it.
    op.create_index(
        "ix_holds_released_resolved_at",
        "holds",
        ["resolved_at"],
        postgresql_where=sa.text("status <> 'held' AND captured_amount IS DISTINCT FROM amount"),
    )
    # The liability at a past instant: the resolved holds that were open at it, by containment in when each held
    # its tokens. Only resolved holds enter it (on capture or release, never on the reserve); greatest() keeps the
    # range valid should a hold be resolved in a transaction that began before it was made.
    op.create_index(
        "ix_holds_open_during",
        "holds",
        [sa.text("tstzrange(created_at, greatest(created_at, resolved_at), '[)')")],
        postgresql_using="gist",
        postgresql_where=sa.text("status <> 'held'"),
    )
    # Log filters that scanned: the audit and finance logs by target, and the entry logs' joins to the approval that
    # applied a transaction or a batch.
    op.create_index("ix_audit_events_target_type_target_id", "audit_events", ["target_type", "target_id"])
    op.create_index(
        "ix_recharge_approvals_transaction_id",
        "recharge_approvals",
        ["transaction_id"],
        postgresql_where=sa.text("transaction_id IS NOT NULL"),
    )
    op.create_index(
        "ix_recharge_approvals_batch_id",
        "recharge_approvals",
        ["batch_id"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_recharge_approvals_batch_id", "recharge_approvals")
    op.drop_index("ix_recharge_approvals_transaction_id", "recharge_approvals")
    op.drop_index("ix_audit_events_target_type_target_id", "audit_events")
    op.drop_index("ix_holds_open_during", "holds")
    for name in ("ix_jobs_status_id", "ix_jobs_tenant_id_status_id", "ix_jobs_user_id_status_id", "ix_jobs_created_at"):
        op.drop_index(name, "jobs")
    op.drop_index("ix_holds_released_resolved_at", "holds")
    op.drop_table("ledger_rollups")
    op.drop_index("ix_users_email_pattern", "users")
    op.drop_table("reconciliation_runs")
    op.drop_constraint(op.f("ck_users_totp_enrolled"), "users")
    op.drop_column("users", "totp_enrolled_at")
    op.drop_column("users", "totp_secret")
