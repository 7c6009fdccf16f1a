"""tenant events: a tenant-wide webhook endpoint for events that belong to no job

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 17:00:00

Job webhooks go to the URL the job named. Account events (a balance crossing its low-balance threshold, an abuse
rule triggering) belong to no job, so a tenant names one URL for them (`tenants.events_webhook_url`, null: no such
events are sent), and a webhook event's job becomes optional. They travel through the same outbox, sender, signing
secret and retry budget as job webhooks.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("events_webhook_url", sa.Text(), nullable=True))
    op.alter_column("webhook_events", "job_id", existing_type=sa.BigInteger(), nullable=True)


def downgrade() -> None:
    # Account events have no job: they go with the column that allowed them.
    op.execute("DELETE FROM webhook_deliveries WHERE event_id IN (SELECT id FROM webhook_events WHERE job_id IS NULL)")
    op.execute("DELETE FROM webhook_events WHERE job_id IS NULL")
    op.alter_column("webhook_events", "job_id", existing_type=sa.BigInteger(), nullable=False)
    op.drop_column("tenants", "events_webhook_url")
