"""credit lots: every credit lands in a lot with a priority and an optional expiry; debits say which lots they burned

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 18:00:00

Lots never replace the journal: a tracked account's lots say which of its tokens are which, and sum to its balance
(`remaining`) and to its held tokens (`held`). Every credit to a user or pool writes lots (`credit_lots`, one per
credited account, or several where the credit mirrors lots it took from elsewhere), every debit burns lots in the
burn order (priority, soonest expiry with none last, oldest) and records how much of each it burned
(`lot_consumptions`), a hold reserves its tokens from lots at reserve (`hold_lot_allocations`) and its capture burns
exactly those. Expired tokens leave through `expiry` transactions to the new untracked `expired` system account.

The reserve and capture functions of 0009 are replaced with the same signatures. The reserve keeps its one
statement for the hold and the account, then allocates the lots in a second statement, whose snapshot is taken
once the first holds the account's row lock: every writer of an account's lots takes that lock first, so the lots
it reads are the ones it updates. The capture stays one statement: it reads only the hold's own allocations (which
never change) and lowers the lots by relative updates, after the account's row is locked.

Every tracked account with tokens gets one `migration` lot (priority 50, no expiry) for its balance and held tokens,
and every open hold an allocation against it. `credit_lot_epoch` records the first transaction the lots account for
(reconciliation compares lots with the journal from there on).
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNT_KINDS = "'user', 'tenant_pool', 'issuance', 'usage_revenue', 'adjustments'"
TRANSACTION_KINDS = "'recharge', 'capture', 'adjustment', 'reversal'"
APPEND_ONLY = ("hold_lot_allocations", "lot_consumptions")

# The burn order as SQL, on a lot aliased `l` (ascending puts NULL, no expiry, last).
BURN_ORDER = "l.priority, l.expires_at, l.created_at, l.id"

RESERVE = f"""
CREATE OR REPLACE FUNCTION public.facemint_hold_reserve(
    p_account_id bigint, p_amount bigint, p_reference text, p_metadata jsonb, p_ttl_seconds double precision,
    p_synchronous_commit boolean
) RETURNS TABLE (hold_id bigint, reserved boolean, available bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_hold bigint;
    v_reserved boolean;
    v_available bigint;
    v_allocated bigint;
BEGIN
    -- One statement: the hold is written and the account's held tokens raised together, guarded so that the
    -- available balance never goes below zero. No hold row (reference reused, or no such tracked account):
    -- no row returned. A hold written but not reserved (not enough tokens): reserved is false, and the caller
    -- raises, which rolls the hold back with its transaction.
    IF NOT p_synchronous_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);  -- this transaction only (SET LOCAL)
    END IF;
    WITH hold AS (
        INSERT INTO public.holds (account_id, tenant_id, amount, reference, metadata, expires_at)
        SELECT a.id, a.tenant_id, p_amount, p_reference, p_metadata, now() + make_interval(secs => p_ttl_seconds)
        FROM public.ledger_accounts a WHERE a.id = p_account_id AND a.balance_tracked
        ON CONFLICT (reference) DO NOTHING
        RETURNING id, account_id, amount
    ),
    raised AS (
        UPDATE public.ledger_accounts a SET held = a.held + hold.amount
        FROM hold
        WHERE a.id = hold.account_id AND a.balance - a.held >= hold.amount
        RETURNING a.balance - a.held AS available
    )
    SELECT hold.id, EXISTS (SELECT 1 FROM raised), (SELECT r.available FROM raised r)
    INTO v_hold, v_reserved, v_available
    FROM hold;
    IF v_hold IS NULL THEN
        RETURN;
    END IF;
    IF v_reserved THEN
        -- The hold's tokens come from the account's lots in burn order, from what each has not already held. A
        -- statement of its own: its snapshot is taken under the account's row lock, which every writer of the
        -- account's lots holds while it writes them, so these are the lots as they are.
        WITH ordered AS (
            SELECT l.id, l.remaining - l.held AS free,
                   sum(l.remaining - l.held) OVER (ORDER BY {BURN_ORDER}) AS upto
            FROM public.credit_lots l
            WHERE l.account_id = p_account_id AND NOT l.spent AND l.remaining > l.held
        ),
        taken AS (
            SELECT o.id, least(o.free, p_amount - (o.upto - o.free)) AS amount
            FROM ordered o WHERE o.upto - o.free < p_amount
        ),
        lots AS (
            UPDATE public.credit_lots l SET held = l.held + t.amount FROM taken t WHERE l.id = t.id
        ),
        allocated AS (
            INSERT INTO public.hold_lot_allocations (hold_id, lot_id, amount)
            SELECT v_hold, t.id, t.amount FROM taken t
        )
        SELECT coalesce(sum(t.amount), 0) INTO v_allocated FROM taken t;
        IF v_allocated <> p_amount THEN
            -- The account's lots no longer add up to its balance: refuse rather than hold tokens no lot has.
            RAISE EXCEPTION 'the lots of account % cover % of the % tokens held', p_account_id, v_allocated, p_amount
                USING ERRCODE = 'check_violation', CONSTRAINT = 'credit_lots_cover_the_balance';
        END IF;
    END IF;
    RETURN QUERY SELECT v_hold, v_reserved, v_available;
END $$
"""

CAPTURE = f"""
CREATE OR REPLACE FUNCTION public.facemint_hold_capture(
    p_hold_id bigint, p_amount bigint, p_request_hash bytea, p_synchronous_commit boolean
)
RETURNS TABLE (transaction_id bigint, account_id bigint, amount bigint, captured_amount bigint, entries bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_transaction bigint;
    v_account bigint;
    v_amount bigint;
    v_captured bigint;
    v_entries bigint;
    v_burned bigint;
BEGIN
    -- One statement: the hold resolved (guarded by status = 'held'), its journal transaction, the account's
    -- balance and held tokens lowered, both entries (the account's and usage revenue's), and the hold's lots: the
    -- captured tokens burned from its allocations in burn order, the rest given back. p_amount NULL captures the
    -- whole hold; the rest of a partial capture is released with it.
    IF NOT p_synchronous_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    WITH hold AS (
        UPDATE public.holds h
        SET status = 'captured', captured_amount = coalesce(p_amount, h.amount), resolved_at = now()
        WHERE h.id = p_hold_id AND h.status = 'held' AND h.amount >= coalesce(p_amount, h.amount)
        RETURNING h.id, h.account_id, h.tenant_id, h.amount, h.captured_amount, h.reference
    ),
    txn AS (
        INSERT INTO public.ledger_transactions
            (kind, idempotency_key, request_hash, amount, tenant_id, hold_id, reference)
        SELECT 'capture', 'hold-capture:' || hold.id, p_request_hash, hold.captured_amount, hold.tenant_id,
               hold.id, hold.reference
        FROM hold
        RETURNING id
    ),
    debited AS (
        UPDATE public.ledger_accounts a
        SET balance = a.balance - hold.captured_amount, held = a.held - hold.amount, version = a.version + 1
        FROM hold WHERE a.id = hold.account_id
        RETURNING a.id, a.balance
    ),
    -- The hold's allocations (fixed at reserve), read once the account's row is locked (debited): the lots are
    -- then updated by the account's lock holder only. Relative updates, so no stale value is written back.
    allocations AS (
        SELECT al.lot_id, al.amount, sum(al.amount) OVER (ORDER BY {BURN_ORDER}) AS upto
        FROM public.hold_lot_allocations al JOIN public.credit_lots l ON l.id = al.lot_id
        WHERE al.hold_id = p_hold_id AND EXISTS (SELECT 1 FROM debited)
    ),
    burn AS (
        SELECT a.lot_id, a.amount AS freed,
               greatest(least(a.amount, hold.captured_amount - (a.upto - a.amount)), 0) AS burned
        FROM allocations a, hold
    ),
    lots AS (
        UPDATE public.credit_lots l SET remaining = l.remaining - b.burned, held = l.held - b.freed
        FROM burn b WHERE l.id = b.lot_id
    ),
    consumed AS (
        INSERT INTO public.lot_consumptions (transaction_id, account_id, lot_id, amount)
        SELECT txn.id, hold.account_id, b.lot_id, b.burned FROM txn, hold, burn b WHERE b.burned > 0
        RETURNING amount
    ),
    written AS (
        INSERT INTO public.ledger_entries (transaction_id, account_id, amount, balance_after)
        SELECT txn.id, debited.id, -hold.captured_amount, debited.balance FROM txn, debited, hold
        UNION ALL
        SELECT txn.id, a.id, hold.captured_amount, NULL FROM txn, hold, public.ledger_accounts a
        WHERE a.kind = 'usage_revenue' AND NOT a.balance_tracked
        RETURNING id
    )
    SELECT txn.id, hold.account_id, hold.amount, hold.captured_amount, (SELECT count(*) FROM written),
           (SELECT coalesce(sum(c.amount), 0) FROM consumed c)
    INTO v_transaction, v_account, v_amount, v_captured, v_entries, v_burned
    FROM txn, hold;
    IF v_transaction IS NULL THEN
        RETURN;
    END IF;
    IF v_burned <> v_captured THEN
        RAISE EXCEPTION 'hold % burned % of its lots'' tokens for a capture of %', p_hold_id, v_burned, v_captured
            USING ERRCODE = 'check_violation', CONSTRAINT = 'credit_lots_cover_the_balance';
    END IF;
    RETURN QUERY SELECT v_transaction, v_account, v_amount, v_captured, v_entries;
END $$
"""


def _hold_functions_0009() -> tuple[str, str]:
    """0009's reserve and capture, which the downgrade puts back."""
    path = Path(__file__).with_name("20261205_0009_hold_functions.py")
    spec = importlib.util.spec_from_file_location("facemint_migration_0009", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(  # type: ignore[return-value]
        body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1) for body in (module.RESERVE, module.CAPTURE)
    )


def upgrade() -> None:
    op.drop_constraint(op.f("ck_ledger_accounts_kind"), "ledger_accounts", type_="check")
    op.create_check_constraint(
        op.f("ck_ledger_accounts_kind"), "ledger_accounts", f"kind IN ({ACCOUNT_KINDS}, 'expired')"
    )
    op.drop_constraint(op.f("ck_ledger_transactions_kind"), "ledger_transactions", type_="check")
    op.create_check_constraint(
        op.f("ck_ledger_transactions_kind"), "ledger_transactions", f"kind IN ({TRANSACTION_KINDS}, 'expiry')"
    )
    op.execute("INSERT INTO ledger_accounts (kind, balance_tracked) VALUES ('expired', false)")

    op.create_table(
        "credit_lots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="50", nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        # What the partial indexes test instead of `remaining > 0`: a capture that leaves tokens in the lot changes
        # `remaining` but not `spent`, so it is a HOT update (no index entry) rather than one per index.
        sa.Column("spent", sa.Boolean(), sa.Computed("remaining = 0", persisted=True), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_lots_amount_positive")),
        sa.CheckConstraint(
            "0 <= held AND held <= remaining AND remaining <= amount", name=op.f("ck_credit_lots_within_amount")
        ),
        sa.CheckConstraint("priority BETWEEN 0 AND 100", name=op.f("ck_credit_lots_priority_range")),
        sa.CheckConstraint(
            "source IN ('recharge', 'transfer', 'grant', 'adjustment', 'reversal', 'migration')",
            name=op.f("ck_credit_lots_source"),
        ),
        sa.CheckConstraint(
            "(source = 'migration') = (transaction_id IS NULL)", name=op.f("ck_credit_lots_credited_by_a_transaction")
        ),
        sa.CheckConstraint("effective_at <= created_at", name=op.f("ck_credit_lots_effective_when_written")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_credit_lots_account_id_ledger_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_credit_lots_transaction_id_ledger_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_lots")),
        postgresql_with={"fillfactor": "80"},  # lots are updated in place on every reserve and capture
    )
    op.create_index(
        "ix_credit_lots_burn_order",
        "credit_lots",
        ["account_id", "priority", "expires_at", "created_at", "id"],
        postgresql_where=sa.text("NOT spent"),
    )
    op.create_index(
        "ix_credit_lots_expires_at",
        "credit_lots",
        ["expires_at"],
        postgresql_where=sa.text("NOT spent AND expires_at IS NOT NULL"),
    )
    # A transaction's lots on one account (the finance ledger log's lots of an entry; a reversal's original lots).
    op.create_index("ix_credit_lots_transaction_account", "credit_lots", ["transaction_id", "account_id"])
    op.create_table(
        "hold_lot_allocations",
        sa.Column("hold_id", sa.BigInteger(), nullable=False),
        sa.Column("lot_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_hold_lot_allocations_amount_positive")),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_hold_lot_allocations_hold_id_holds")),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["credit_lots.id"], name=op.f("fk_hold_lot_allocations_lot_id_credit_lots")
        ),
        sa.PrimaryKeyConstraint("hold_id", "lot_id", name=op.f("pk_hold_lot_allocations")),
    )
    op.create_table(
        "lot_consumptions",
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        # The lot's account, so that an entry's consumptions are one index range (reconciliation checks it is
        # the lot's; no foreign key of its own: the lot's is enough).
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("lot_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_lot_consumptions_amount_positive")),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_lot_consumptions_transaction_id_ledger_transactions"),
        ),
        sa.ForeignKeyConstraint(["lot_id"], ["credit_lots.id"], name=op.f("fk_lot_consumptions_lot_id_credit_lots")),
        sa.PrimaryKeyConstraint("transaction_id", "account_id", "lot_id", name=op.f("pk_lot_consumptions")),
    )
    op.create_table(
        "credit_lot_epoch",
        sa.Column("one_row", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("first_transaction_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("one_row", name=op.f("ck_credit_lot_epoch_one_row")),
        sa.PrimaryKeyConstraint("one_row", name=op.f("pk_credit_lot_epoch")),
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION facemint_forbid_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION facemint_forbid_change()"
        )

    # The books as they stand become lots, with no writer in between (SHARE blocks inserts and updates, not reads).
    op.execute("LOCK TABLE ledger_accounts, ledger_transactions, holds IN SHARE MODE")
    op.execute(
        "INSERT INTO credit_lots (account_id, tenant_id, source, priority, amount, remaining, held) "
        "SELECT id, tenant_id, 'migration', 50, balance, balance, held FROM ledger_accounts "
        "WHERE balance_tracked AND balance > 0"
    )
    op.execute(
        "INSERT INTO hold_lot_allocations (hold_id, lot_id, amount) "
        "SELECT h.id, l.id, h.amount FROM holds h JOIN credit_lots l ON l.account_id = h.account_id "
        "WHERE h.status = 'held'"
    )
    op.execute(
        "INSERT INTO credit_lot_epoch (first_transaction_id) SELECT coalesce(max(id), 0) + 1 FROM ledger_transactions"
    )
    op.execute(RESERVE)
    op.execute(CAPTURE)


def downgrade() -> None:
    for body in _hold_functions_0009():
        op.execute(body)
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    op.drop_table("credit_lot_epoch")
    op.drop_table("lot_consumptions")
    op.drop_table("hold_lot_allocations")
    op.drop_index("ix_credit_lots_transaction_account", table_name="credit_lots")
    op.drop_index("ix_credit_lots_expires_at", table_name="credit_lots")
    op.drop_index("ix_credit_lots_burn_order", table_name="credit_lots")
    op.drop_table("credit_lots")
    # Refused (foreign key, check) once expiries were posted: their history cannot be undone by a downgrade.
    op.execute("DELETE FROM ledger_accounts WHERE kind = 'expired' AND NOT balance_tracked")
    op.drop_constraint(op.f("ck_ledger_transactions_kind"), "ledger_transactions", type_="check")
    op.create_check_constraint(
        op.f("ck_ledger_transactions_kind"), "ledger_transactions", f"kind IN ({TRANSACTION_KINDS})"
    )
    op.drop_constraint(op.f("ck_ledger_accounts_kind"), "ledger_accounts", type_="check")
    op.create_check_constraint(op.f("ck_ledger_accounts_kind"), "ledger_accounts", f"kind IN ({ACCOUNT_KINDS})")
