"""hold functions: reserve and capture as database functions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 14:00:00

A hold's reserve and capture were each one statement sent as text, planned afresh at every call (a CTE of four
parts takes longer to plan than to run). As PL/pgSQL functions, their statements are prepared once per
connection and their plans cached, and a call is one short `SELECT` with typed arguments. The statements are the
same ones, under the same triggers and constraints: every rule of the ledger still holds, because the tables
enforce them, not the caller.

`p_synchronous_commit = false` commits the calling transaction asynchronously (`SET LOCAL synchronous_commit =
off`), the policy a hot account needs (docs/benchmarks.md): the account's row lock is then released without
waiting for the WAL flush. Atomicity is unchanged (a crash can forget the last acknowledged transactions whole,
never half of one), so tokens are neither created nor lost; what can be lost is the acknowledgement.

Both are SECURITY INVOKER (the default): they run with the privileges of the role that calls them, which may
insert and update exactly what it could before. Names are schema-qualified, so a caller's search_path cannot
redirect them.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESERVE = """
CREATE FUNCTION public.facemint_hold_reserve(
    p_account_id bigint, p_amount bigint, p_reference text, p_metadata jsonb, p_ttl_seconds double precision,
    p_synchronous_commit boolean
) RETURNS TABLE (hold_id bigint, reserved boolean, available bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- One statement: the hold is written and the account's held tokens raised together, guarded so that the
    -- available balance never goes below zero. No hold row (reference reused, or no such tracked account):
    -- no row returned. A hold written but not reserved (not enough tokens): reserved is false, and the caller
    -- raises, which rolls the hold back with its transaction.
    IF NOT p_synchronous_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);  -- this transaction only (SET LOCAL)
    END IF;
    RETURN QUERY
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
    SELECT hold.id, EXISTS (SELECT 1 FROM raised), (SELECT r.available FROM raised r) FROM hold;
END $$
"""

CAPTURE = """
CREATE FUNCTION public.facemint_hold_capture(
    p_hold_id bigint, p_amount bigint, p_request_hash bytea, p_synchronous_commit boolean
)
RETURNS TABLE (transaction_id bigint, account_id bigint, amount bigint, captured_amount bigint, entries bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- One statement: the hold resolved (guarded by status = 'held'), its journal transaction, the account's
    -- balance and held tokens lowered, and both entries (the account's and usage revenue's). p_amount NULL
    -- captures the whole hold; the rest of a partial capture is released with it.
    IF NOT p_synchronous_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN QUERY
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
    written AS (
        INSERT INTO public.ledger_entries (transaction_id, account_id, amount, balance_after)
        SELECT txn.id, debited.id, -hold.captured_amount, debited.balance FROM txn, debited, hold
        UNION ALL
        SELECT txn.id, a.id, hold.captured_amount, NULL FROM txn, hold, public.ledger_accounts a
        WHERE a.kind = 'usage_revenue' AND NOT a.balance_tracked
        RETURNING id
    )
    SELECT txn.id, hold.account_id, hold.amount, hold.captured_amount, (SELECT count(*) FROM written)
    FROM txn, hold;
END $$
"""


def upgrade() -> None:
    op.execute(RESERVE)
    op.execute(CAPTURE)


def downgrade() -> None:
    op.execute("DROP FUNCTION public.facemint_hold_capture(bigint, bigint, bytea, boolean)")
    op.execute("DROP FUNCTION public.facemint_hold_reserve(bigint, bigint, text, jsonb, double precision, boolean)")
