"""abuse rules: per-tenant rules evaluated on submit (and in the worker), and the triggers they raise for review

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 18:00:00

`abuse_rules` are a tenant's rules (too many jobs in a window, too many jobs with the same source face in a
window, spend above a multiple of the account's own recent rate), each `flag` or `freeze`. The service mirrors a
tenant's enabled rules into Redis, where the submit path reads them with its counters in one call; a tenant's
`abuse_rules_version` moves on with every change (under the tenant row's lock) so that a stale copy never
overwrites a newer one there. Rules are retired (`deleted_at`), never deleted: triggers name them.

`abuse_triggers` lists what a rule caught, for review: once per rule, user, window and counter generation (a
unique key; unfreezing a user starts a new generation), moving from `open` to `resolved` once, never deleted.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A trigger is resolved once; only its outcome columns change then, and it is never deleted.
TRIGGER_RULES = [
    """
    CREATE FUNCTION facemint_abuse_trigger_transition() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'abuse triggers are never deleted' USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF OLD.status <> 'open' THEN
            RAISE EXCEPTION 'abuse trigger % is already %', OLD.id, OLD.status USING ERRCODE = 'check_violation';
        END IF;
        IF (NEW.id, NEW.tenant_id, NEW.rule_id, NEW.user_id, NEW.kind, NEW.action, NEW.window_start,
            NEW.window_seconds, NEW.generation, NEW.observed, NEW.job_public_id, NEW.created_at)
           IS DISTINCT FROM
           (OLD.id, OLD.tenant_id, OLD.rule_id, OLD.user_id, OLD.kind, OLD.action, OLD.window_start,
            OLD.window_seconds, OLD.generation, OLD.observed, OLD.job_public_id, OLD.created_at) THEN
            RAISE EXCEPTION 'only the outcome of abuse trigger % may change', OLD.id USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER abuse_triggers_one_way BEFORE UPDATE OR DELETE ON abuse_triggers
    FOR EACH ROW EXECUTE FUNCTION facemint_abuse_trigger_transition()
    """,
]


def upgrade() -> None:
    op.add_column(
        "tenants", sa.Column("abuse_rules_version", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.create_table(
        "abuse_rules",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("max_jobs", sa.Integer(), nullable=True),
        sa.Column("multiple", sa.Double(), nullable=True),
        sa.Column("baseline_hours", sa.Integer(), nullable=True),
        sa.Column("min_tokens", sa.BigInteger(), nullable=True),
        sa.Column("created_by_user_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('jobs_per_window', 'same_face_per_window', 'spend_rate')", name=op.f("ck_abuse_rules_kind")
        ),
        sa.CheckConstraint("action IN ('flag', 'freeze')", name=op.f("ck_abuse_rules_action")),
        sa.CheckConstraint("window_seconds BETWEEN 1 AND 86400", name=op.f("ck_abuse_rules_window")),
        sa.CheckConstraint(
            "(kind IN ('jobs_per_window', 'same_face_per_window') AND max_jobs >= 1 AND multiple IS NULL"
            " AND baseline_hours IS NULL AND min_tokens IS NULL)"
            " OR (kind = 'spend_rate' AND max_jobs IS NULL AND multiple > 1 AND baseline_hours BETWEEN 1 AND 168"
            " AND min_tokens >= 0 AND window_seconds <= baseline_hours * 3600)",
            name=op.f("ck_abuse_rules_parameters"),
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_abuse_rules_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_abuse_rules")),
    )
    op.create_index(
        "ix_abuse_rules_tenant_id_live",
        "abuse_rules",
        ["tenant_id", "id"],
        unique=False,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "abuse_triggers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("rule_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), server_default="0", nullable=False),
        sa.Column("observed", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("job_public_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="open", nullable=False),
        sa.Column("resolved_by_user_id", sa.BigInteger(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("unfroze", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("action IN ('flag', 'freeze')", name=op.f("ck_abuse_triggers_action")),
        sa.CheckConstraint("status IN ('open', 'resolved')", name=op.f("ck_abuse_triggers_status")),
        sa.CheckConstraint(
            "(status = 'open' AND resolved_at IS NULL AND resolved_by_user_id IS NULL AND NOT unfroze)"
            " OR (status = 'resolved' AND resolved_at IS NOT NULL AND resolved_by_user_id IS NOT NULL)",
            name=op.f("ck_abuse_triggers_resolution_matches_status"),
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_abuse_triggers_tenant_id_tenants")),
        sa.ForeignKeyConstraint(["rule_id"], ["abuse_rules.id"], name=op.f("fk_abuse_triggers_rule_id_abuse_rules")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_abuse_triggers_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_abuse_triggers")),
        sa.UniqueConstraint(
            "rule_id", "user_id", "window_start", "generation", name=op.f("uq_abuse_triggers_once_per_window")
        ),
    )
    op.create_index("ix_abuse_triggers_tenant_id_id", "abuse_triggers", ["tenant_id", "id"], unique=False)
    op.create_index("ix_abuse_triggers_status_id", "abuse_triggers", ["status", "id"], unique=False)
    op.create_index("ix_abuse_triggers_user_id_id", "abuse_triggers", ["user_id", "id"], unique=False)
    for statement in TRIGGER_RULES:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("abuse_triggers")
    op.execute("DROP FUNCTION facemint_abuse_trigger_transition()")
    op.drop_table("abuse_rules")
    op.drop_column("tenants", "abuse_rules_version")
