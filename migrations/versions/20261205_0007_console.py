"""console: TOTP second factors for users, and the record of each reconciliation run

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


def downgrade() -> None:
    for name in ("ix_jobs_status_id", "ix_jobs_tenant_id_status_id", "ix_jobs_user_id_status_id", "ix_jobs_created_at"):
        op.drop_index(name, "jobs")
    op.drop_index("ix_users_email_pattern", "users")
    op.drop_table("reconciliation_runs")
    op.drop_constraint(op.f("ck_users_totp_enrolled"), "users")
    op.drop_column("users", "totp_enrolled_at")
    op.drop_column("users", "totp_secret")
