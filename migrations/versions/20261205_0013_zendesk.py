"""zendesk: the Zendesk avatar connector's tables

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 12:00:00

- `zendesk_assets`: a tenant's allow-listed images (avatar templates and scenes), stored by the service;
- `zendesk_connectors`: one per tenant: the Zendesk base URL, the API email, the API token and webhook signing
  secret sealed with AES-256-GCM (and their fingerprints; the secret is set once the Zendesk webhook exists), the integration user who pays, the rules and default;
- `zendesk_results`: the results cache, one live entry per (tenant, content hash);
- `zendesk_tickets`: every ticket event a signed webhook delivered (unique per connector, ticket and event, so a
  replay does nothing) and its swap and reply.

Downgrade drops the four tables (the stored images and results stay in storage under integrations/).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "zendesk_assets",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('template', 'scene')", name=op.f("ck_zendesk_assets_kind")),
        sa.CheckConstraint("length(btrim(name)) > 0", name=op.f("ck_zendesk_assets_name_not_blank")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_zendesk_assets_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zendesk_assets")),
        sa.UniqueConstraint("storage_key", name=op.f("uq_zendesk_assets_storage_key")),
    )
    op.create_index("ix_zendesk_assets_tenant_id_id", "zendesk_assets", ["tenant_id", "id"], unique=False)

    op.create_table(
        "zendesk_connectors",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("public_id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("api_email", sa.Text(), nullable=False),
        sa.Column("api_token_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("api_token_fingerprint", sa.Text(), nullable=False),
        sa.Column("signing_secret_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("signing_secret_fingerprint", sa.Text(), nullable=True),
        sa.Column("integration_user_id", sa.BigInteger(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("processors", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("reply_body", sa.Text(), nullable=False),
        sa.Column(
            "rules", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.Column("default_template_id", sa.BigInteger(), nullable=True),
        sa.Column("default_scene_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(rules) = 'array'", name=op.f("ck_zendesk_connectors_rules_array")),
        sa.CheckConstraint(
            "(default_template_id IS NULL) = (default_scene_id IS NULL)", name=op.f("ck_zendesk_connectors_default_pair")
        ),
        sa.CheckConstraint("cardinality(processors) > 0", name=op.f("ck_zendesk_connectors_processors_not_empty")),
        sa.CheckConstraint(
            "(signing_secret_sealed IS NULL) = (signing_secret_fingerprint IS NULL)",
            name=op.f("ck_zendesk_connectors_signing_secret_pair"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_zendesk_connectors_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["integration_user_id"], ["users.id"], name=op.f("fk_zendesk_connectors_integration_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["default_template_id"],
            ["zendesk_assets.id"],
            name=op.f("fk_zendesk_connectors_default_template_id_zendesk_assets"),
        ),
        sa.ForeignKeyConstraint(
            ["default_scene_id"], ["zendesk_assets.id"], name=op.f("fk_zendesk_connectors_default_scene_id_zendesk_assets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zendesk_connectors")),
        sa.UniqueConstraint("public_id", name=op.f("uq_zendesk_connectors_public_id")),
        sa.UniqueConstraint("tenant_id", name=op.f("uq_zendesk_connectors_tenant_id")),
    )

    op.create_table(
        "zendesk_results",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.LargeBinary(), nullable=False),
        sa.Column("template_id", sa.BigInteger(), nullable=False),
        sa.Column("scene_id", sa.BigInteger(), nullable=False),
        sa.Column("processors", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=True),
        sa.Column("content_type", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'ready', 'failed')", name=op.f("ck_zendesk_results_status")),
        sa.CheckConstraint(
            "(status = 'ready') = (storage_key IS NOT NULL)", name=op.f("ck_zendesk_results_ready_iff_stored")
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_zendesk_results_tenant_id_tenants")),
        sa.ForeignKeyConstraint(
            ["template_id"], ["zendesk_assets.id"], name=op.f("fk_zendesk_results_template_id_zendesk_assets")
        ),
        sa.ForeignKeyConstraint(
            ["scene_id"], ["zendesk_assets.id"], name=op.f("fk_zendesk_results_scene_id_zendesk_assets")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_zendesk_results_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zendesk_results")),
    )
    op.create_index(
        "uq_zendesk_results_tenant_id_content_hash",
        "zendesk_results",
        ["tenant_id", "content_hash"],
        unique=True,
        postgresql_where=sa.text("status <> 'failed'"),
    )
    op.create_index(
        "ix_zendesk_results_pending",
        "zendesk_results",
        ["job_id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )

    op.create_table(
        "zendesk_tickets",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("connector_id", sa.BigInteger(), nullable=False),
        sa.Column("zendesk_ticket_id", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("matched_by", sa.Text(), nullable=True),
        sa.Column("template_id", sa.BigInteger(), nullable=True),
        sa.Column("scene_id", sa.BigInteger(), nullable=True),
        sa.Column("result_id", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("upload_token", sa.Text(), nullable=True),
        sa.Column("attachment_id", sa.BigInteger(), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("put_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("replied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('skipped', 'swapping', 'replying', 'replied', 'failed')", name=op.f("ck_zendesk_tickets_status")
        ),
        sa.CheckConstraint(
            "(status = 'replied') = (replied_at IS NOT NULL)", name=op.f("ck_zendesk_tickets_replied_iff_stamped")
        ),
        sa.CheckConstraint(
            "status NOT IN ('swapping', 'replying', 'replied') OR result_id IS NOT NULL",
            name=op.f("ck_zendesk_tickets_result"),
        ),
        sa.CheckConstraint("zendesk_ticket_id > 0", name=op.f("ck_zendesk_tickets_ticket_id_positive")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_zendesk_tickets_tenant_id_tenants")),
        sa.ForeignKeyConstraint(
            ["connector_id"], ["zendesk_connectors.id"], name=op.f("fk_zendesk_tickets_connector_id_zendesk_connectors")
        ),
        sa.ForeignKeyConstraint(
            ["template_id"], ["zendesk_assets.id"], name=op.f("fk_zendesk_tickets_template_id_zendesk_assets")
        ),
        sa.ForeignKeyConstraint(
            ["scene_id"], ["zendesk_assets.id"], name=op.f("fk_zendesk_tickets_scene_id_zendesk_assets")
        ),
        sa.ForeignKeyConstraint(
            ["result_id"], ["zendesk_results.id"], name=op.f("fk_zendesk_tickets_result_id_zendesk_results")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_zendesk_tickets_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zendesk_tickets")),
        sa.UniqueConstraint("connector_id", "zendesk_ticket_id", "event", name="uq_zendesk_tickets_ticket_event"),
    )
    op.create_index("ix_zendesk_tickets_tenant_id_id", "zendesk_tickets", ["tenant_id", "id"], unique=False)
    op.create_index(
        "ix_zendesk_tickets_due",
        "zendesk_tickets",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'replying'"),
    )
    op.create_index(
        "ix_zendesk_tickets_swapping",
        "zendesk_tickets",
        ["result_id"],
        unique=False,
        postgresql_where=sa.text("status = 'swapping'"),
    )


def downgrade() -> None:
    op.drop_table("zendesk_tickets")
    op.drop_table("zendesk_results")
    op.drop_table("zendesk_connectors")
    op.drop_table("zendesk_assets")
