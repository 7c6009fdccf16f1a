"""recurring grants: user labels

Revision ID: 0015
Revises: 0010
Create Date: 2026-12-05 20:00:00

Users get `labels` (a tenant's own tags, such as "vip"), which a tenant's recurring grants will select on.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_LABELS = 16


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("labels", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
    )
    op.create_check_constraint(op.f("ck_users_labels_count"), "users", f"cardinality(labels) <= {MAX_LABELS}")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_users_labels_count"), "users", type_="check")
    op.drop_column("users", "labels")
