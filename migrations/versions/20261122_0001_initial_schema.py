"""initial schema: tenants, users, api keys, audit, the ledger, holds and recharge batches

Revision ID: 0001
Revises:
Create Date: 2026-11-22 02:27:39.800213
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Rules the database enforces whatever the application does. Kept as SQL because they are Postgres objects.
LEDGER_RULES = [
    # Append-only journal and audit trail: corrections are new rows, never edits.
    """
    CREATE FUNCTION facemint_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    *[
        f"""
        CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
        FOR EACH ROW EXECUTE FUNCTION facemint_forbid_change()
        """
        for table in ("ledger_transactions", "ledger_entries", "audit_events")
    ],
    *[
        f"""
        CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
        FOR EACH STATEMENT EXECUTE FUNCTION facemint_forbid_change()
        """
        for table in ("ledger_transactions", "ledger_entries", "audit_events", "holds")
    ],
    # Double entry: after each statement that adds entries, every transaction it touched sums to zero.
    """
    CREATE FUNCTION facemint_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE unbalanced bigint;
    BEGIN
        SELECT e.transaction_id INTO unbalanced
        FROM ledger_entries e
        WHERE e.transaction_id IN (SELECT DISTINCT transaction_id FROM new_entries)
        GROUP BY e.transaction_id
        HAVING sum(e.amount) <> 0
        LIMIT 1;
        IF unbalanced IS NOT NULL THEN
            RAISE EXCEPTION 'ledger transaction % does not sum to zero', unbalanced
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION facemint_check_balanced()
    """,
    # Holds move one way: from held to exactly one outcome, once; nothing else about them changes.
    """
    CREATE FUNCTION facemint_hold_transition() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'holds are never deleted' USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF OLD.status <> 'held' THEN
            RAISE EXCEPTION 'hold % is already %', OLD.id, OLD.status USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.account_id <> OLD.account_id OR NEW.amount <> OLD.amount OR NEW.reference <> OLD.reference
           OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.created_at <> OLD.created_at THEN
            RAISE EXCEPTION 'only the outcome of hold % may change', OLD.id USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER holds_one_way BEFORE UPDATE OR DELETE ON holds
    FOR EACH ROW EXECUTE FUNCTION facemint_hold_transition()
    """,
]

DROP_LEDGER_RULES = [
    "DROP TRIGGER IF EXISTS holds_one_way ON holds",
    "DROP TRIGGER IF EXISTS ledger_entries_balanced ON ledger_entries",
    *[
        f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}"
        for table in ("ledger_transactions", "ledger_entries", "audit_events")
    ],
    *[
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}"
        for table in ("ledger_transactions", "ledger_entries", "audit_events", "holds")
    ],
    "DROP FUNCTION IF EXISTS facemint_hold_transition()",
    "DROP FUNCTION IF EXISTS facemint_check_balanced()",
    "DROP FUNCTION IF EXISTS facemint_forbid_change()",
]


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
        sa.Column("actor_api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target_type", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("ip", postgresql.INET(), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_action"), "audit_events", ["action"], unique=False)
    op.create_index(op.f("ix_audit_events_actor_user_id"), "audit_events", ["actor_user_id"], unique=False)
    op.create_index("ix_audit_events_tenant_id_id", "audit_events", ["tenant_id", "id"], unique=False)
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("balance_tracked", sa.Boolean(), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "balance_tracked = (kind IN ('user', 'tenant_pool'))",
            name=op.f("ck_ledger_accounts_tracked_by_kind"),
        ),
        sa.CheckConstraint(
            "kind IN ('user', 'tenant_pool', 'issuance', 'usage_revenue', 'adjustments')",
            name=op.f("ck_ledger_accounts_kind"),
        ),
        sa.CheckConstraint(
            "NOT balance_tracked OR balance - held >= 0",
            name=op.f("ck_ledger_accounts_available_nonnegative"),
        ),
        sa.CheckConstraint(
            "balance_tracked OR (balance = 0 AND held = 0)",
            name=op.f("ck_ledger_accounts_untracked_has_no_cache"),
        ),
        sa.CheckConstraint("held >= 0", name=op.f("ck_ledger_accounts_held_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        postgresql_with={"fillfactor": "80"},
    )
    op.create_index(op.f("ix_ledger_accounts_tenant_id"), "ledger_accounts", ["tenant_id"], unique=False)
    op.create_index(
        "uq_ledger_accounts_system_kind",
        "ledger_accounts",
        ["kind"],
        unique=True,
        postgresql_where=sa.text("NOT balance_tracked"),
    )
    op.create_table(
        "holds",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), server_default="held", nullable=False),
        sa.Column("captured_amount", sa.BigInteger(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'captured') = (captured_amount IS NOT NULL)",
            name=op.f("ck_holds_captured_amount_iff_captured"),
        ),
        sa.CheckConstraint(
            "(status = 'held') = (resolved_at IS NULL)", name=op.f("ck_holds_resolved_at_iff_resolved")
        ),
        sa.CheckConstraint(
            "status IN ('held', 'captured', 'released', 'expired')", name=op.f("ck_holds_status")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_holds_amount_positive")),
        sa.CheckConstraint(
            "captured_amount > 0 AND captured_amount <= amount", name=op.f("ck_holds_captured_within_amount")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_holds_account_id_ledger_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
        sa.UniqueConstraint("reference", name=op.f("uq_holds_reference")),
    )
    op.create_index(op.f("ix_holds_account_id"), "holds", ["account_id"], unique=False)
    op.create_index(
        "ix_holds_open_expires_at",
        "holds",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'held'"),
    )
    op.create_index(op.f("ix_holds_tenant_id"), "holds", ["tenant_id"], unique=False)
    op.create_table(
        "recharge_batches",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source_account_id", sa.BigInteger(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("applied_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("total_amount", sa.BigInteger(), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("mode IN ('atomic', 'partial')", name=op.f("ck_recharge_batches_mode")),
        sa.CheckConstraint(
            "applied_count >= 0 AND total_amount >= 0", name=op.f("ck_recharge_batches_totals_nonnegative")
        ),
        sa.ForeignKeyConstraint(
            ["source_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_recharge_batches_source_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recharge_batches")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_recharge_batches_idempotency_key")),
    )
    op.create_index(op.f("ix_recharge_batches_created_at"), "recharge_batches", ["created_at"], unique=False)
    op.create_index(op.f("ix_recharge_batches_tenant_id"), "recharge_batches", ["tenant_id"], unique=False)
    op.create_table(
        "tenants",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("plan", sa.Text(), server_default="free", nullable=False),
        sa.Column("pool_account_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("plan IN ('free', 'pro', 'enterprise')", name=op.f("ck_tenants_plan")),
        sa.CheckConstraint("status IN ('active', 'suspended')", name=op.f("ck_tenants_status")),
        sa.CheckConstraint("length(btrim(name)) > 0", name=op.f("ck_tenants_name_not_blank")),
        sa.ForeignKeyConstraint(
            ["pool_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_tenants_pool_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
        sa.UniqueConstraint("pool_account_id", name=op.f("uq_tenants_pool_account_id")),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("hold_id", sa.BigInteger(), nullable=True),
        sa.Column("reverses_transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "kind IN ('recharge', 'capture', 'adjustment', 'reversal')",
            name=op.f("ck_ledger_transactions_kind"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_transactions_amount_positive")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["recharge_batches.id"],
            name=op.f("fk_ledger_transactions_batch_id_recharge_batches"),
        ),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_ledger_transactions_hold_id_holds")),
        sa.ForeignKeyConstraint(
            ["reverses_transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_transactions_reverses_transaction_id_ledger_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transactions")),
        sa.UniqueConstraint("hold_id", name=op.f("uq_ledger_transactions_hold_id")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_transactions_idempotency_key")),
        sa.UniqueConstraint(
            "reverses_transaction_id", name=op.f("uq_ledger_transactions_reverses_transaction_id")
        ),
    )
    op.create_index(
        op.f("ix_ledger_transactions_batch_id"), "ledger_transactions", ["batch_id"], unique=False
    )
    op.create_index(
        op.f("ix_ledger_transactions_created_at"), "ledger_transactions", ["created_at"], unique=False
    )
    op.create_index(
        op.f("ix_ledger_transactions_tenant_id"), "ledger_transactions", ["tenant_id"], unique=False
    )
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(role IN ('platform_admin', 'operator', 'finance')) = (tenant_id IS NULL)",
            name=op.f("ck_users_tenant_by_role"),
        ),
        sa.CheckConstraint(
            "role IN ('platform_admin', 'operator', 'finance', 'tenant_admin', 'member')",
            name=op.f("ck_users_role"),
        ),
        sa.CheckConstraint("status IN ('active', 'frozen')", name=op.f("ck_users_status")),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_users_email_lowercase")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_users_account_id_ledger_accounts")
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_users_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("account_id", name=op.f("uq_users_account_id")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_index(op.f("ix_users_tenant_id"), "users", ["tenant_id"], unique=False)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("public_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("created_by_user_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_user_id"], ["users.id"], name=op.f("fk_api_keys_created_by_user_id_users")
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_api_keys_tenant_id_tenants")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("public_id", name=op.f("uq_api_keys_public_id")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"], unique=False)
    op.create_index(op.f("ix_api_keys_user_id"), "api_keys", ["user_id"], unique=False)
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=True),
        sa.Column("row_no", sa.Integer(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_ledger_entries_amount_nonzero")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_ledger_entries_account_id_ledger_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_entries_transaction_id_ledger_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    op.create_index("ix_ledger_entries_account_id_id", "ledger_entries", ["account_id", "id"], unique=False)
    op.create_index(
        op.f("ix_ledger_entries_transaction_id"), "ledger_entries", ["transaction_id"], unique=False
    )

    for statement in LEDGER_RULES:
        op.execute(statement)
    op.execute(
        "INSERT INTO ledger_accounts (kind, balance_tracked) "
        "VALUES ('issuance', false), ('usage_revenue', false), ('adjustments', false)"
    )


def downgrade() -> None:
    for statement in DROP_LEDGER_RULES:
        op.execute(statement)
    op.drop_index(op.f("ix_ledger_entries_transaction_id"), table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_account_id_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index(op.f("ix_api_keys_user_id"), table_name="api_keys")
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index(op.f("ix_users_tenant_id"), table_name="users")
    op.drop_table("users")
    op.drop_index(op.f("ix_ledger_transactions_tenant_id"), table_name="ledger_transactions")
    op.drop_index(op.f("ix_ledger_transactions_created_at"), table_name="ledger_transactions")
    op.drop_index(op.f("ix_ledger_transactions_batch_id"), table_name="ledger_transactions")
    op.drop_table("ledger_transactions")
    op.drop_table("tenants")
    op.drop_index(op.f("ix_recharge_batches_tenant_id"), table_name="recharge_batches")
    op.drop_index(op.f("ix_recharge_batches_created_at"), table_name="recharge_batches")
    op.drop_table("recharge_batches")
    op.drop_index(op.f("ix_holds_tenant_id"), table_name="holds")
    op.drop_index("ix_holds_open_expires_at", table_name="holds", postgresql_where=sa.text("status = 'held'"))
    op.drop_index(op.f("ix_holds_account_id"), table_name="holds")
    op.drop_table("holds")
    op.drop_index(
        "uq_ledger_accounts_system_kind",
        table_name="ledger_accounts",
        postgresql_where=sa.text("NOT balance_tracked"),
    )
    op.drop_index(op.f("ix_ledger_accounts_tenant_id"), table_name="ledger_accounts")
    op.drop_table("ledger_accounts")
    op.drop_index("ix_audit_events_tenant_id_id", table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_actor_user_id"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_action"), table_name="audit_events")
    op.drop_table("audit_events")
