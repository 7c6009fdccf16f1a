"""recurring grants: grant definitions, their periods, once-only awards, and user labels

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 20:00:00

A recurring grant (`credit_grants`) gives N tokens every day, week or month (UTC periods), expiring at the period's
end, to every user of every tenant on a plan (issued by the platform) or to a tenant's users, optionally only those
carrying a label (issued by the platform or paid from the tenant's pool). The workers credit each period once per
account: `grant_awards` (append-only) has one row per (grant, period start, account), written in the transaction
that credits it, and its primary key refuses a second. `credit_grant_periods` keeps each period's figures and the
last shortfall of a pool that could not pay. Users get `labels` (a tenant's own tags, such as "vip").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_LABELS = 16


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("labels", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
    )
    op.create_check_constraint(op.f("ck_users_labels_count"), "users", f"cardinality(labels) <= {MAX_LABELS}")

    op.create_table(
        "credit_grants",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=True),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="10", nullable=False),
        sa.Column("funding", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("scope IN ('plan', 'tenant')", name=op.f("ck_credit_grants_scope")),
        sa.CheckConstraint("period IN ('day', 'week', 'month')", name=op.f("ck_credit_grants_period")),
        sa.CheckConstraint("funding IN ('platform', 'tenant_pool')", name=op.f("ck_credit_grants_funding")),
        sa.CheckConstraint("plan IN ('free', 'pro', 'enterprise')", name=op.f("ck_credit_grants_plan")),
        sa.CheckConstraint("(scope = 'plan') = (plan IS NOT NULL)", name=op.f("ck_credit_grants_plan_iff_plan_scope")),
        sa.CheckConstraint(
            "(scope = 'tenant') = (tenant_id IS NOT NULL)", name=op.f("ck_credit_grants_tenant_iff_tenant_scope")
        ),
        sa.CheckConstraint(
            "scope = 'tenant' OR (funding = 'platform' AND label IS NULL)", name=op.f("ck_credit_grants_plan_grant_terms")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_grants_amount_positive")),
        sa.CheckConstraint("priority BETWEEN 0 AND 100", name=op.f("ck_credit_grants_priority_range")),
        sa.CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name=op.f("ck_credit_grants_ends_after_start")),
        sa.CheckConstraint("length(btrim(name)) > 0", name=op.f("ck_credit_grants_name_not_blank")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_credit_grants_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
    )
    op.create_index(op.f("ix_credit_grants_tenant_id"), "credit_grants", ["tenant_id"])

    op.create_table(
        "credit_grant_periods",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("grant_id", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_accounts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("granted_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("shortfall_needed", sa.BigInteger(), nullable=True),
        sa.Column("shortfall_available", sa.BigInteger(), nullable=True),
        sa.Column("shortfall_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("period_end > period_start", name=op.f("ck_credit_grant_periods_ends_after_start")),
        sa.CheckConstraint(
            "granted_accounts >= 0 AND granted_tokens >= 0", name=op.f("ck_credit_grant_periods_granted_nonnegative")
        ),
        sa.CheckConstraint(
            "(shortfall_needed IS NULL) = (shortfall_at IS NULL)", name=op.f("ck_credit_grant_periods_shortfall_complete")
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["credit_grants.id"], name=op.f("fk_credit_grant_periods_grant_id_credit_grants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grant_periods")),
        sa.UniqueConstraint("grant_id", "period_start", name=op.f("uq_credit_grant_periods_grant_id")),
    )

    op.create_table(
        "grant_awards",
        sa.Column("grant_id", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_grant_awards_amount_positive")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_grant_awards_account_id_ledger_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_grant_awards_transaction_id_ledger_transactions"),
        ),
        # (grant, period) first: the scheduler's "who lacks this period" reads it as a prefix.
        sa.PrimaryKeyConstraint("grant_id", "period_start", "account_id", name=op.f("pk_grant_awards")),
    )
    op.create_index(op.f("ix_grant_awards_transaction_id"), "grant_awards", ["transaction_id"])
    op.execute(
        "CREATE TRIGGER grant_awards_append_only BEFORE UPDATE OR DELETE ON grant_awards "
        "FOR EACH ROW EXECUTE FUNCTION facemint_forbid_change()"
    )
    op.execute(
        "CREATE TRIGGER grant_awards_no_truncate BEFORE TRUNCATE ON grant_awards "
        "FOR EACH STATEMENT EXECUTE FUNCTION facemint_forbid_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS grant_awards_no_truncate ON grant_awards")
    op.execute("DROP TRIGGER IF EXISTS grant_awards_append_only ON grant_awards")
    op.drop_index(op.f("ix_grant_awards_transaction_id"), table_name="grant_awards")
    op.drop_table("grant_awards")
    op.drop_table("credit_grant_periods")
    op.drop_index(op.f("ix_credit_grants_tenant_id"), table_name="credit_grants")
    op.drop_table("credit_grants")
    op.drop_constraint(op.f("ck_users_labels_count"), "users", type_="check")
    op.drop_column("users", "labels")
