"""hardening: credentials versions, webhook leases, result purging, approvals of adjustments and reversals,
account balances that must follow the journal

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# A tracked account's balance is a cache of its journal: whenever a statement changes it, the account's latest
# entry (written by the same statement) must carry the new balance as its balance_after. Checked once per
# statement over every row it changed, so a balance can only move together with the entries that explain it; a
# bare `UPDATE ledger_accounts SET balance = ...` is refused whoever runs it.
FOLLOW_JOURNAL = [
    """
    CREATE FUNCTION facemint_balance_follows_journal() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        stray bigint;
    BEGIN
        SELECT n.id INTO stray
        FROM new_accounts n JOIN old_accounts o ON o.id = n.id
        WHERE n.balance IS DISTINCT FROM o.balance
          AND n.balance IS DISTINCT FROM (
              SELECT e.balance_after FROM ledger_entries e WHERE e.account_id = n.id ORDER BY e.id DESC LIMIT 1)
        LIMIT 1;
        IF stray IS NOT NULL THEN
            RAISE EXCEPTION 'the balance of account % changed without a journal entry', stray
                USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_accounts_follow_journal';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_accounts_follow_journal AFTER UPDATE ON ledger_accounts
    REFERENCING OLD TABLE AS old_accounts NEW TABLE AS new_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION facemint_balance_follows_journal()
    """,
]


def upgrade() -> None:
    # Bumped by every password, role or status change (and by signing out everywhere): an access token names
    # the version it was issued under and is refused once it is out of date.
    op.add_column("users", sa.Column("credentials_version", sa.Integer(), server_default="1", nullable=False))

    # Webhook senders lease what they send; a lease is extended while its attempt runs.
    op.add_column("webhook_events", sa.Column("lease_token", sa.Text(), nullable=True))
    op.add_column("webhook_events", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_webhook_events_tenant_due",
        "webhook_events",
        ["tenant_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )

    # Set once every stored object of a job's result (the settled one and any an earlier attempt left) is gone.
    op.add_column("jobs", sa.Column("result_purged_at", sa.DateTime(timezone=True), nullable=True))
    # The per-tenant cap on queued plus running jobs counts these at every submit.
    op.create_index(
        "ix_jobs_tenant_live",
        "jobs",
        ["tenant_id"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )

    op.drop_constraint(op.f("ck_recharge_approvals_kind"), "recharge_approvals", type_="check")
    op.create_check_constraint(
        op.f("ck_recharge_approvals_kind"), "recharge_approvals", "kind IN ('single', 'batch', 'adjustment', 'reversal')"
    )
    # What one requester moved without review in the last 24 hours is summed from its audit events (four-eyes):
    # by requester and time, so the sum reads a day of one user's events, not its whole history.
    op.create_index("ix_audit_events_actor_user_id_occurred_at", "audit_events", ["actor_user_id", "occurred_at"])

    for statement in FOLLOW_JOURNAL:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS ledger_accounts_follow_journal ON ledger_accounts")
    op.execute("DROP FUNCTION IF EXISTS facemint_balance_follows_journal()")
    op.drop_index("ix_audit_events_actor_user_id_occurred_at", table_name="audit_events")
    op.drop_constraint(op.f("ck_recharge_approvals_kind"), "recharge_approvals", type_="check")
    op.create_check_constraint(op.f("ck_recharge_approvals_kind"), "recharge_approvals", "kind IN ('single', 'batch')")
    op.drop_index("ix_jobs_tenant_live", table_name="jobs")
    op.drop_column("jobs", "result_purged_at")
    op.drop_index("ix_webhook_events_tenant_due", table_name="webhook_events")
    op.drop_column("webhook_events", "lease_expires_at")
    op.drop_column("webhook_events", "lease_token")
    op.drop_column("users", "credentials_version")
