"""metered jobs: the price book, jobs, webhook events and deliveries, the tenants' webhook secrets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 05:00:00

Rules the database keeps whatever the code does:
- prices are append-only (a change is a new version; every job names the version it was charged at);
- a job that reached succeeded, failed or canceled never changes status, hold or money again (only its file and
  housekeeping columns move), so a late worker or sweeper cannot settle it a second time;
- jobs are never deleted (the money trail stays; DELETE /v1/jobs/{id} deletes files only).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


RULES = [
    """
    CREATE TRIGGER prices_append_only BEFORE UPDATE OR DELETE ON prices
    FOR EACH ROW EXECUTE FUNCTION facemint_forbid_change()
    """,
    """
    CREATE FUNCTION facemint_job_transition() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'jobs are never deleted' USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF OLD.status IN ('succeeded', 'failed', 'canceled') AND (
            NEW.status IS DISTINCT FROM OLD.status
            OR NEW.tokens_captured IS DISTINCT FROM OLD.tokens_captured
            OR NEW.hold_id IS DISTINCT FROM OLD.hold_id
            OR NEW.tokens_held IS DISTINCT FROM OLD.tokens_held
            OR NEW.finished_at IS DISTINCT FROM OLD.finished_at
        ) THEN
            RAISE EXCEPTION 'job % is already %', OLD.public_id, OLD.status USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.hold_id IS DISTINCT FROM OLD.hold_id OR NEW.tokens_held IS DISTINCT FROM OLD.tokens_held
           OR NEW.account_id IS DISTINCT FROM OLD.account_id OR NEW.price_version IS DISTINCT FROM OLD.price_version
        THEN
            RAISE EXCEPTION 'a job''s hold and price never change' USING ERRCODE = 'check_violation';
        END IF;
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END $$
    """,
    """
    CREATE TRIGGER jobs_one_way BEFORE UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION facemint_job_transition()
    """,
    """
    CREATE TRIGGER jobs_no_truncate BEFORE TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION facemint_forbid_change()
    """,
    "INSERT INTO prices (operation, version, tokens_per_unit, actor, note) "
    "VALUES ('swap.image', 1, 1, 'migration 0003', 'default price')",
]

DROP_RULES = [
    "DROP TRIGGER IF EXISTS jobs_no_truncate ON jobs",
    "DROP TRIGGER IF EXISTS jobs_one_way ON jobs",
    "DROP FUNCTION IF EXISTS facemint_job_transition()",
    "DROP TRIGGER IF EXISTS prices_append_only ON prices",
]


def upgrade() -> None:
    op.create_table(
        "prices",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("tokens_per_unit", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "operation ~ '^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$'", name=op.f("ck_prices_operation_format")
        ),
        sa.CheckConstraint("tokens_per_unit > 0", name=op.f("ck_prices_tokens_per_unit_positive")),
        sa.CheckConstraint("version > 0", name=op.f("ck_prices_version_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prices")),
        sa.UniqueConstraint("operation", "version", name="uq_prices_operation_version"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("public_id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("hold_id", sa.BigInteger(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("price_version", sa.Integer(), nullable=False),
        sa.Column("tokens_per_unit", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("tokens_held", sa.BigInteger(), nullable=False),
        sa.Column("tokens_captured", sa.BigInteger(), nullable=True),
        sa.Column("options", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("input_location", sa.Text(), nullable=False),
        sa.Column("result_location", sa.Text(), nullable=True),
        sa.Column("result_content_type", sa.Text(), nullable=True),
        sa.Column("result_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("timings_ms", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("inputs_deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("files_deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'succeeded') = (tokens_captured IS NOT NULL)", name=op.f("ck_jobs_captured_iff_succeeded")
        ),
        sa.CheckConstraint(
            "(status IN ('succeeded', 'failed', 'canceled')) = (finished_at IS NOT NULL)",
            name=op.f("ck_jobs_finished_iff_terminal"),
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')", name=op.f("ck_jobs_status")
        ),
        sa.CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name=op.f("ck_jobs_attempts_within_budget")),
        sa.CheckConstraint(
            "tokens_captured IS NULL OR (tokens_captured > 0 AND tokens_captured <= tokens_held)",
            name=op.f("ck_jobs_captured_within_held"),
        ),
        sa.CheckConstraint(
            "tokens_held > 0 AND units > 0 AND tokens_per_unit > 0", name=op.f("ck_jobs_amounts_positive")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_jobs_account_id_ledger_accounts")
        ),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_jobs_api_key_id_api_keys")),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_jobs_hold_id_holds")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_jobs_tenant_id_tenants")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_jobs_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("hold_id", name=op.f("uq_jobs_hold_id")),
        sa.UniqueConstraint("public_id", name=op.f("uq_jobs_public_id")),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_jobs_user_id_idempotency_key"),
    )
    op.create_index(
        "ix_jobs_live",
        "jobs",
        ["status", "heartbeat_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "ix_jobs_result_expires_at",
        "jobs",
        ["result_expires_at"],
        unique=False,
        postgresql_where=sa.text("files_deleted_at IS NULL AND result_location IS NOT NULL"),
    )
    op.create_index("ix_jobs_tenant_id_id", "jobs", ["tenant_id", "id"], unique=False)
    op.create_index("ix_jobs_user_id_id", "jobs", ["user_id", "id"], unique=False)
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("public_id", sa.Text(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_events_status")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_webhook_events_job_id_jobs")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_events_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("public_id", name=op.f("uq_webhook_events_public_id")),
    )
    op.create_index(
        "ix_webhook_events_due",
        "webhook_events",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(op.f("ix_webhook_events_job_id"), "webhook_events", ["job_id"], unique=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["webhook_events.id"], name=op.f("fk_webhook_deliveries_event_id_webhook_events")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(op.f("ix_webhook_deliveries_event_id"), "webhook_deliveries", ["event_id"], unique=False)
    # Existing tenants get a random secret; new ones get theirs from the application (tenants.orm).
    op.add_column(
        "tenants",
        sa.Column(
            "webhook_secret",
            sa.Text(),
            server_default=sa.text(
                # gen_random_uuid() draws from the server's cryptographic random source (122 random bits each).
                "'whsec_' || encode(decode(replace(gen_random_uuid()::text, '-', '') || "
                "replace(gen_random_uuid()::text, '-', ''), 'hex'), 'base64')"
            ),
            nullable=False,
        ),
    )
    op.alter_column("tenants", "webhook_secret", server_default=None)
    for statement in RULES:
        op.execute(statement)


def downgrade() -> None:
    for statement in DROP_RULES:
        op.execute(statement)
    op.drop_column("tenants", "webhook_secret")
    op.drop_index(op.f("ix_webhook_deliveries_event_id"), table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index(op.f("ix_webhook_events_job_id"), table_name="webhook_events")
    op.drop_index("ix_webhook_events_due", table_name="webhook_events", postgresql_where=sa.text("status = 'pending'"))
    op.drop_table("webhook_events")
    op.drop_index("ix_jobs_user_id_id", table_name="jobs")
    op.drop_index("ix_jobs_tenant_id_id", table_name="jobs")
    op.drop_index(
        "ix_jobs_result_expires_at",
        table_name="jobs",
        postgresql_where=sa.text("files_deleted_at IS NULL AND result_location IS NOT NULL"),
    )
    op.drop_index("ix_jobs_live", table_name="jobs", postgresql_where=sa.text("status IN ('queued', 'running')"))
    op.drop_table("jobs")
    op.drop_table("prices")
