"""video: per-second video prices and the enhancer's, a job's price lines, video progress, partial captures

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 08:00:00

- the price book gains `swap.video` (10 tokens per started second), `enhance.image` (1 per image) and
  `enhance.video` (5 per started second);
- a job records the lines it is priced by (`price_lines`: [{operation, version, tokens_per_unit}]; its
  `tokens_per_unit` is their sum) and, for a video, its progress (`frames_done` of `frames_total`, `progress_at`);
- a canceled job may be charged (a video canceled while running pays for the seconds already processed), so
  "captured if and only if succeeded" becomes: succeeded => captured, captured => succeeded or canceled;
- a job's price lines never change, as its price version and hold never did.

Downgrade removes all three operations' prices (every version) and the columns; it refuses (a check violation)
while a canceled job carries a charge, which the old rule cannot express.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_PRICES = {"swap.video": 10, "enhance.image": 1, "enhance.video": 5}

# facemint_job_transition (migration 0003) with the price lines among what never changes.
JOB_TRANSITION = """
CREATE OR REPLACE FUNCTION facemint_job_transition() RETURNS trigger LANGUAGE plpgsql
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
       {extra}
    THEN
        RAISE EXCEPTION 'a job''s hold and price never change' USING ERRCODE = 'check_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$
"""


def upgrade() -> None:
    values = ", ".join(
        f"('{operation}', 1, {tokens}, 'migration 0008', 'default price')" for operation, tokens in NEW_PRICES.items()
    )
    op.execute(f"INSERT INTO prices (operation, version, tokens_per_unit, actor, note) VALUES {values}")
    # Nullable, no default: adding them rewrites nothing. Jobs from before have no lines (read as their one price).
    op.add_column("jobs", sa.Column("price_lines", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column("jobs", sa.Column("frames_done", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("frames_total", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(
        op.f("ck_jobs_price_lines_array"),
        "jobs",
        "price_lines IS NULL OR (jsonb_typeof(price_lines) = 'array' AND jsonb_array_length(price_lines) > 0)",
    )
    op.create_check_constraint(
        op.f("ck_jobs_frames_within_total"),
        "jobs",
        "(frames_total IS NULL OR frames_total >= 0) "
        "AND (frames_done IS NULL OR (frames_total IS NOT NULL AND frames_done BETWEEN 0 AND frames_total))",
    )
    op.drop_constraint(op.f("ck_jobs_captured_iff_succeeded"), "jobs")
    op.create_check_constraint(
        op.f("ck_jobs_captured_by_outcome"),
        "jobs",
        "(status <> 'succeeded' OR tokens_captured IS NOT NULL) "
        "AND (tokens_captured IS NULL OR status IN ('succeeded', 'canceled'))",
    )
    op.execute(JOB_TRANSITION.format(extra="OR NEW.price_lines IS DISTINCT FROM OLD.price_lines"))


def downgrade() -> None:
    op.execute(JOB_TRANSITION.format(extra=""))
    op.drop_constraint(op.f("ck_jobs_captured_by_outcome"), "jobs")
    op.create_check_constraint(
        op.f("ck_jobs_captured_iff_succeeded"), "jobs", "(status = 'succeeded') = (tokens_captured IS NOT NULL)"
    )
    op.drop_constraint(op.f("ck_jobs_frames_within_total"), "jobs")
    op.drop_constraint(op.f("ck_jobs_price_lines_array"), "jobs")
    for column in ("progress_at", "frames_total", "frames_done", "price_lines"):
        op.drop_column("jobs", column)
    # The price book is append-only even for its owner (prices_append_only): lifted for this statement only.
    op.execute("ALTER TABLE prices DISABLE TRIGGER prices_append_only")
    op.execute(sa.text("DELETE FROM prices WHERE operation = ANY(:operations)").bindparams(operations=list(NEW_PRICES)))
    op.execute("ALTER TABLE prices ENABLE TRIGGER prices_append_only")
