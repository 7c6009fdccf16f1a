"""four-eyes approval of recurring grants that mint tokens

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 21:00:00

A platform-funded grant issues new tokens every period, for every eligible account, for as long as it runs: its
creation, and any change that lets it mint more, waits for a second operator like a large recharge does. The held
request is a `recharge_approvals` row of kind `grant` (its payload: the grant's proposed terms); approving it makes
or changes the grant (`facemint.grants.approving`). Its `total_amount` and `row_count` are one period's mint at
the accounts eligible when it was asked (amount x accounts), which may be none yet.

`credit_grants.approval_id` names the approval whose terms the grant last took. A deferred trigger refuses, at
commit, a platform-funded grant that is inserted, or changed so it can mint more (a larger amount, enabled again, a
label changed or dropped, an earlier start, a later or no end), unless it names an approval of kind `grant`, for
this grant, approved in the same transaction, whose terms it does not exceed; the approvals' own rules (migration
0005: once, not by the requester, before it expires) do the rest. Whatever fixes a grant's meaning (scope, plan,
tenant, period, funding) never changes. Grants made before this revision keep running as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "'single', 'batch', 'adjustment', 'reversal'"
OLD_AMOUNTS = "total_amount > 0 AND row_count > 0"
# A grant's period mint is counted over the accounts eligible when it is asked: none yet is a real answer.
NEW_AMOUNTS = f"({OLD_AMOUNTS}) OR (kind = 'grant' AND total_amount >= 0 AND row_count >= 0)"

GRANT_RULES = [
    # Whether terms `n` let a grant mint more than terms `o` (the same test as `facemint.grants.service.widens`).
    """
    CREATE FUNCTION facemint_grant_widens(
        o_amount bigint, o_enabled boolean, o_label text, o_starts timestamptz, o_ends timestamptz,
        n_amount bigint, n_enabled boolean, n_label text, n_starts timestamptz, n_ends timestamptz
    ) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
        SELECT n_amount > o_amount
            OR (n_enabled AND NOT o_enabled)
            OR (o_label IS NOT NULL AND n_label IS DISTINCT FROM o_label)
            OR n_starts < o_starts
            OR (o_ends IS NOT NULL AND (n_ends IS NULL OR n_ends > o_ends))
    $$
    """,
    """
    CREATE FUNCTION facemint_grant_four_eyes() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        a recharge_approvals%ROWTYPE;
        terms jsonb;
    BEGIN
        IF TG_OP = 'UPDATE' AND (NEW.scope, NEW.plan, NEW.tenant_id, NEW.period, NEW.funding)
            IS DISTINCT FROM (OLD.scope, OLD.plan, OLD.tenant_id, OLD.period, OLD.funding) THEN
            RAISE EXCEPTION 'the scope, plan, tenant, period and funding of grant % never change', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.funding <> 'platform' THEN
            RETURN NULL;
        END IF;
        IF TG_OP = 'UPDATE' AND NOT facemint_grant_widens(
            OLD.amount, OLD.enabled, OLD.label, OLD.starts_at, OLD.ends_at,
            NEW.amount, NEW.enabled, NEW.label, NEW.starts_at, NEW.ends_at) THEN
            RETURN NULL;
        END IF;
        -- A new platform grant, or one that may now mint more: a second operator approved exactly this, now.
        IF TG_OP = 'UPDATE' AND NEW.approval_id IS NOT DISTINCT FROM OLD.approval_id THEN
            RAISE EXCEPTION 'platform grant % cannot mint more without a second operator''s approval', NEW.id
                USING ERRCODE = 'check_violation';
        END IF;
        SELECT * INTO a FROM recharge_approvals WHERE id = NEW.approval_id;
        terms := a.payload -> 'terms';
        -- Anything unknown (no approval, a term missing from it) counts as not approved.
        IF coalesce(
            a.id IS NULL OR a.kind <> 'grant' OR a.status <> 'approved'
            -- now() is the transaction's start: the approval was decided in this very transaction.
            OR a.decided_at IS DISTINCT FROM now()
            OR (a.result ->> 'grant_id') IS DISTINCT FROM NEW.id::text
            OR (NEW.scope, NEW.plan, NEW.tenant_id, NEW.period, NEW.funding)
                IS DISTINCT FROM (terms ->> 'scope', terms ->> 'plan', CAST(terms ->> 'tenant_id' AS bigint),
                                  terms ->> 'period', terms ->> 'funding')
            OR facemint_grant_widens(
                CAST(terms ->> 'amount' AS bigint), CAST(terms ->> 'enabled' AS boolean), terms ->> 'label',
                -- No start asked for: from the approval on.
                coalesce(CAST(terms ->> 'starts_at' AS timestamptz), now()), CAST(terms ->> 'ends_at' AS timestamptz),
                NEW.amount, NEW.enabled, NEW.label, NEW.starts_at, NEW.ends_at),
            true) THEN
            RAISE EXCEPTION 'platform grant % takes only terms a second operator approved in this transaction', NEW.id
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    # Deferred to the commit: approving writes the grant first, then marks its approval approved.
    """
    CREATE CONSTRAINT TRIGGER credit_grants_four_eyes AFTER INSERT OR UPDATE ON credit_grants
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION facemint_grant_four_eyes()
    """,
]


def upgrade() -> None:
    op.drop_constraint(op.f("ck_recharge_approvals_kind"), "recharge_approvals", type_="check")
    op.create_check_constraint(op.f("ck_recharge_approvals_kind"), "recharge_approvals", f"kind IN ({KINDS}, 'grant')")
    op.drop_constraint(op.f("ck_recharge_approvals_amounts_positive"), "recharge_approvals", type_="check")
    op.create_check_constraint(op.f("ck_recharge_approvals_amounts_positive"), "recharge_approvals", NEW_AMOUNTS)

    op.add_column("credit_grants", sa.Column("approval_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_credit_grants_approval_id_recharge_approvals"),
        "credit_grants",
        "recharge_approvals",
        ["approval_id"],
        ["id"],
    )
    for statement in GRANT_RULES:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS credit_grants_four_eyes ON credit_grants")
    op.execute("DROP FUNCTION IF EXISTS facemint_grant_four_eyes()")
    op.execute(
        "DROP FUNCTION IF EXISTS facemint_grant_widens(bigint, boolean, text, timestamptz, timestamptz, "
        "bigint, boolean, text, timestamptz, timestamptz)"
    )
    op.drop_constraint(op.f("fk_credit_grants_approval_id_recharge_approvals"), "credit_grants", type_="foreignkey")
    op.drop_column("credit_grants", "approval_id")
    # Grant approvals cannot stay under the old rules: they go with the kind.
    op.execute("ALTER TABLE recharge_approvals DISABLE TRIGGER recharge_approvals_one_way")
    op.execute("DELETE FROM recharge_approvals WHERE kind = 'grant'")
    op.execute("ALTER TABLE recharge_approvals ENABLE TRIGGER recharge_approvals_one_way")
    op.drop_constraint(op.f("ck_recharge_approvals_amounts_positive"), "recharge_approvals", type_="check")
    op.create_check_constraint(op.f("ck_recharge_approvals_amounts_positive"), "recharge_approvals", OLD_AMOUNTS)
    op.drop_constraint(op.f("ck_recharge_approvals_kind"), "recharge_approvals", type_="check")
    op.create_check_constraint(op.f("ck_recharge_approvals_kind"), "recharge_approvals", f"kind IN ({KINDS})")
