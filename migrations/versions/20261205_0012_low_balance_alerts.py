"""low-balance alerts: a threshold and a re-arm level per user account or tenant pool

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 18:00:00

One row per ledger account that has (or had) an alert. An armed alert fires once when the account's available
tokens (balance - held) drop below `threshold`: it disarms in the statement that fires it, and the tenant's
`balance.low` event is queued in the same transaction. It re-arms once available reaches `threshold +
hysteresis`. Removing an alert stamps `removed_at` (the service deletes no rows).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "balance_alerts",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("hysteresis", sa.BigInteger(), nullable=False),
        sa.Column("armed", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rearmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("threshold > 0", name=op.f("ck_balance_alerts_threshold_positive")),
        sa.CheckConstraint("hysteresis >= 0", name=op.f("ck_balance_alerts_hysteresis_nonnegative")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_balance_alerts_account_id_ledger_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_balance_alerts")),
    )
    # The service's privileges on it are facemint.migrate.TABLE_PRIVILEGES' (read-write), granted after upgrade.


def downgrade() -> None:
    op.drop_table("balance_alerts")
