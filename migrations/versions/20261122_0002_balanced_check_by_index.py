"""ledger rule functions: balanced check through the index; search_path pinned on every rule function

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 03:45:00

The first version of `facemint_check_balanced()` filtered `ledger_entries` with `transaction_id IN (SELECT ...)`,
which Postgres planned as a scan of the whole journal after every posting (measured: captures slowed as the
ledger grew). Summing each touched transaction with a LATERAL subquery uses `ix_ledger_entries_transaction_id`.

Every rule function also gets a fixed search_path with pg_temp last: otherwise a session could create a temporary
table named `ledger_entries` and the check would read that instead of the journal.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BY_INDEX = """
CREATE OR REPLACE FUNCTION facemint_check_balanced() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE unbalanced bigint;
BEGIN
    SELECT touched.transaction_id INTO unbalanced
    FROM (SELECT DISTINCT transaction_id FROM new_entries) touched
    CROSS JOIN LATERAL (
        SELECT sum(e.amount) AS total FROM public.ledger_entries e WHERE e.transaction_id = touched.transaction_id
    ) sums
    WHERE sums.total <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not sum to zero', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$
"""

FULL_SCAN = """
CREATE OR REPLACE FUNCTION facemint_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE unbalanced bigint;
BEGIN
    SELECT e.transaction_id INTO unbalanced
    FROM ledger_entries e
    WHERE e.transaction_id IN (SELECT DISTINCT transaction_id FROM new_entries)
    GROUP BY e.transaction_id
    HAVING sum(e.amount) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not sum to zero', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$
"""


PINNED = ("facemint_forbid_change()", "facemint_hold_transition()")


def upgrade() -> None:
    op.execute(BY_INDEX)
    for function in PINNED:
        op.execute(f"ALTER FUNCTION {function} SET search_path = pg_catalog, public, pg_temp")


def downgrade() -> None:
    for function in PINNED:
        op.execute(f"ALTER FUNCTION {function} RESET search_path")
    op.execute(FULL_SCAN)
