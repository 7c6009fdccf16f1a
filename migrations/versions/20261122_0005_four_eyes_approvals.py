"""four-eyes approvals: large recharges wait for a second operator

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 06:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# An approval moves one way, like a hold: from pending to exactly one outcome, once; what was requested never
# changes afterwards (the payload is what gets applied, so editing it would change what the approver approved).
APPROVAL_RULES = [
    """
    CREATE FUNCTION facemint_approval_transition() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'recharge approvals are never deleted' USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF OLD.status <> 'pending' THEN
            RAISE EXCEPTION 'recharge approval % is already %', OLD.id, OLD.status USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.status = 'pending' THEN
            RAISE EXCEPTION 'recharge approval % must leave pending', OLD.id USING ERRCODE = 'check_violation';
        END IF;
        IF (NEW.id, NEW.kind, NEW.tenant_id, NEW.requested_by_user_id, NEW.requested_by_api_key_id,
            NEW.idempotency_key, NEW.request_hash, NEW.payload, NEW.total_amount, NEW.row_count, NEW.reason,
            NEW.expires_at, NEW.created_at)
           IS DISTINCT FROM
           (OLD.id, OLD.kind, OLD.tenant_id, OLD.requested_by_user_id, OLD.requested_by_api_key_id,
            OLD.idempotency_key, OLD.request_hash, OLD.payload, OLD.total_amount, OLD.row_count, OLD.reason,
            OLD.expires_at, OLD.created_at) THEN
            RAISE EXCEPTION 'only the outcome of recharge approval % may change', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        -- now() is the transaction's start: the same clock the service compares with.
        IF NEW.status = 'approved' AND now() >= OLD.expires_at THEN
            RAISE EXCEPTION 'recharge approval % expired at %', OLD.id, OLD.expires_at
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.status = 'expired' AND now() < OLD.expires_at THEN
            RAISE EXCEPTION 'recharge approval % is not due to expire', OLD.id USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER recharge_approvals_one_way BEFORE UPDATE OR DELETE ON recharge_approvals
    FOR EACH ROW EXECUTE FUNCTION facemint_approval_transition()
    """,
]


def upgrade() -> None:
    op.create_table(
        "recharge_approvals",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("requested_by_user_id", sa.BigInteger(), nullable=False),
        sa.Column("requested_by_api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("total_amount", sa.BigInteger(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by_user_id", sa.BigInteger(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('single', 'batch')", name=op.f("ck_recharge_approvals_kind")),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'expired')", name=op.f("ck_recharge_approvals_status")
        ),
        sa.CheckConstraint("total_amount > 0 AND row_count > 0", name=op.f("ck_recharge_approvals_amounts_positive")),
        sa.CheckConstraint(
            "(status = 'pending' AND decided_at IS NULL AND decided_by_user_id IS NULL)"
            " OR (status = 'expired' AND decided_at IS NOT NULL AND decided_by_user_id IS NULL)"
            " OR (status IN ('approved', 'rejected') AND decided_at IS NOT NULL AND decided_by_user_id IS NOT NULL)",
            name=op.f("ck_recharge_approvals_decision_matches_status"),
        ),
        sa.CheckConstraint(
            "status <> 'approved' OR decided_by_user_id <> requested_by_user_id",
            name=op.f("ck_recharge_approvals_four_eyes"),
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_recharge_approvals_transaction_id_ledger_transactions"),
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["recharge_batches.id"],
            name=op.f("fk_recharge_approvals_batch_id_recharge_batches"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recharge_approvals")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_recharge_approvals_idempotency_key")),
    )
    op.create_index("ix_recharge_approvals_tenant_id_id", "recharge_approvals", ["tenant_id", "id"], unique=False)
    op.create_index(
        "ix_recharge_approvals_status_expires_at", "recharge_approvals", ["status", "expires_at"], unique=False
    )
    for statement in APPROVAL_RULES:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS recharge_approvals_one_way ON recharge_approvals")
    op.execute("DROP FUNCTION IF EXISTS facemint_approval_transition()")
    op.drop_index("ix_recharge_approvals_status_expires_at", table_name="recharge_approvals")
    op.drop_index("ix_recharge_approvals_tenant_id_id", table_name="recharge_approvals")
    op.drop_table("recharge_approvals")
