"""Reconciliation: proves from the journal alone that no token was created or lost.

Each check is one set-based query returning the offending ids; an empty report means the books balance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.reports import rollup

# Each tracked account's net movement per transaction, from the first transaction lots account for (those before it
# left their balances as `migration` lots, migration 0010): what its lots must have burned or received.
_NET_PER_ACCOUNT = """
SELECT en.transaction_id, en.account_id, sum(en.amount) AS amount
FROM ledger_entries en JOIN ledger_accounts a ON a.id = en.account_id
WHERE a.balance_tracked
  AND en.transaction_id >= coalesce((SELECT first_transaction_id FROM credit_lot_epoch), 0)
GROUP BY en.transaction_id, en.account_id
"""

CHECKS: dict[str, tuple[str, str]] = {
    "transaction_unbalanced": (
        "every transaction's entries sum to zero",
        """
        SELECT transaction_id AS id, sum(amount) AS detail FROM ledger_entries
        GROUP BY transaction_id HAVING sum(amount) <> 0
        """,
    ),
    "transaction_without_entries": (
        "every transaction has entries",
        """
        SELECT t.id, t.kind AS detail FROM ledger_transactions t
        WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transaction_id = t.id)
        """,
    ),
    "balance_mismatch": (
        "each tracked account's balance equals the sum of its entries",
        """
        SELECT a.id, a.balance - coalesce(e.total, 0) AS detail
        FROM ledger_accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_entries GROUP BY account_id) e
               ON e.account_id = a.id
        WHERE a.balance_tracked AND a.balance <> coalesce(e.total, 0)
        """,
    ),
    "balance_after_chain_broken": (
        "each entry's balance-after is the previous one's plus its amount",
        """
        SELECT id, account_id AS detail FROM (
            SELECT e.id, e.account_id, e.amount, e.balance_after,
                   lag(e.balance_after) OVER (PARTITION BY e.account_id ORDER BY e.id) AS previous
            FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
            WHERE a.balance_tracked
        ) chain
        WHERE balance_after IS NULL OR balance_after <> coalesce(previous, 0) + amount
        """,
    ),
    "held_mismatch": (
        "each account's held equals its open holds",
        """
        SELECT a.id, a.held - coalesce(h.total, 0) AS detail
        FROM ledger_accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM holds WHERE status = 'held' GROUP BY account_id) h
               ON h.account_id = a.id
        WHERE a.held <> coalesce(h.total, 0)
        """,
    ),
    "available_negative": (
        "no user or pool account has available below zero",
        "SELECT id, balance - held AS detail FROM ledger_accounts WHERE balance_tracked AND balance - held < 0",
    ),
    "system_account_cached": (
        "system accounts keep no cached balance (theirs is the sum of their entries)",
        "SELECT id, balance AS detail FROM ledger_accounts WHERE NOT balance_tracked AND (balance <> 0 OR held <> 0)",
    ),
    "hold_outcome_mismatch": (
        "a captured hold has exactly one capture for its captured amount; other holds have none",
        """
        SELECT h.id, h.status AS detail
        FROM holds h
        LEFT JOIN (SELECT hold_id, count(*) AS n, sum(amount) AS amount FROM ledger_transactions
                   WHERE hold_id IS NOT NULL GROUP BY hold_id) c ON c.hold_id = h.id
        WHERE (h.status = 'captured' AND (c.n IS DISTINCT FROM 1 OR c.amount IS DISTINCT FROM h.captured_amount))
           OR (h.status <> 'captured' AND c.n IS NOT NULL)
        """,
    ),
    "hold_account_mismatch": (
        "each hold is on a user or pool account and carries that account's tenant (the daily report counts released "
        "tokens by the hold's tenant)",
        """
        SELECT h.id, coalesce(h.tenant_id::text, 'none') || ' on account ' || a.id AS detail
        FROM holds h JOIN ledger_accounts a ON a.id = h.account_id
        WHERE NOT a.balance_tracked OR h.tenant_id IS DISTINCT FROM a.tenant_id
        """,
    ),
    "capture_time_mismatch": (
        "a captured hold was resolved when its capture was posted (the daily report's days agree)",
        """
        SELECT h.id, t.id AS detail
        FROM holds h JOIN ledger_transactions t ON t.hold_id = h.id
        WHERE h.resolved_at IS DISTINCT FROM t.created_at
        """,
    ),
    "lot_balance_mismatch": (
        "each tracked account's credit lots add up to its balance (what they have left) and its held tokens",
        """
        SELECT a.id, format('balance %s, lots %s; held %s, lots %s', a.balance, coalesce(l.remaining, 0), a.held,
                            coalesce(l.held, 0)) AS detail
        FROM ledger_accounts a
        LEFT JOIN (SELECT account_id, sum(remaining) AS remaining, sum(held) AS held FROM credit_lots
                   GROUP BY account_id) l ON l.account_id = a.id
        WHERE a.balance_tracked AND (a.balance <> coalesce(l.remaining, 0) OR a.held <> coalesce(l.held, 0))
        """,
    ),
    "lot_account_mismatch": (
        "each lot is on a user or pool account and carries that account's tenant",
        """
        SELECT l.id, coalesce(l.tenant_id::text, 'none') || ' on account ' || a.id AS detail
        FROM credit_lots l JOIN ledger_accounts a ON a.id = l.account_id
        WHERE NOT a.balance_tracked OR l.tenant_id IS DISTINCT FROM a.tenant_id
        """,
    ),
    "lot_burned_mismatch": (
        "each lot's amount less what it has left is what debits burned of it",
        """
        SELECT l.id, l.amount - l.remaining - coalesce(c.amount, 0) AS detail
        FROM credit_lots l
        LEFT JOIN (SELECT lot_id, sum(amount) AS amount FROM lot_consumptions GROUP BY lot_id) c ON c.lot_id = l.id
        WHERE l.amount - l.remaining <> coalesce(c.amount, 0)
        """,
    ),
    "lot_consumption_account_mismatch": (
        "each consumption names the account of the lot it burned",
        """
        SELECT c.transaction_id AS id, format('lot %s of account %s recorded on %s', l.id, l.account_id, c.account_id)
               AS detail
        FROM lot_consumptions c JOIN credit_lots l ON l.id = c.lot_id
        WHERE c.account_id <> l.account_id
        """,
    ),
    "lot_held_mismatch": (
        "each lot holds exactly what the open holds took from it",
        """
        SELECT l.id, l.held - coalesce(h.amount, 0) AS detail
        FROM credit_lots l
        LEFT JOIN (SELECT al.lot_id, sum(al.amount) AS amount FROM hold_lot_allocations al
                   JOIN holds h ON h.id = al.hold_id WHERE h.status = 'held' GROUP BY al.lot_id) h ON h.lot_id = l.id
        WHERE l.held <> coalesce(h.amount, 0)
        """,
    ),
    "hold_allocation_mismatch": (
        "each open hold (and every hold that took lots) took exactly its amount, from lots of its own account",
        """
        SELECT h.id, coalesce(a.amount, 0) AS detail
        FROM holds h
        LEFT JOIN (SELECT al.hold_id, sum(al.amount) AS amount, min(l.account_id) AS low, max(l.account_id) AS high
                   FROM hold_lot_allocations al JOIN credit_lots l ON l.id = al.lot_id GROUP BY al.hold_id) a
               ON a.hold_id = h.id
        WHERE (h.status = 'held' OR a.hold_id IS NOT NULL)
          AND (a.amount IS DISTINCT FROM h.amount OR a.low <> h.account_id OR a.high <> h.account_id)
        """,
    ),
    "lot_debit_mismatch": (
        "each debit of a tracked account (since lots) burned exactly its tokens from that account's lots",
        f"""
        SELECT transaction_id AS id, format('account %s: debited %s, lots burned %s', account_id,
                                            coalesce(-e.amount, 0), coalesce(c.amount, 0)) AS detail
        FROM ({_NET_PER_ACCOUNT} HAVING sum(en.amount) < 0) e
        FULL JOIN (SELECT transaction_id, account_id, sum(amount) AS amount FROM lot_consumptions GROUP BY 1, 2) c
             USING (transaction_id, account_id)
        WHERE coalesce(-e.amount, 0) <> coalesce(c.amount, 0)
        """,
    ),
    "lot_credit_mismatch": (
        "each credit of a tracked account (since lots) landed in lots of that account for exactly its tokens",
        f"""
        SELECT transaction_id AS id, format('account %s: credited %s, lots %s', account_id, coalesce(e.amount, 0),
                                            coalesce(l.amount, 0)) AS detail
        FROM ({_NET_PER_ACCOUNT} HAVING sum(en.amount) > 0) e
        FULL JOIN (SELECT transaction_id, account_id, sum(amount) AS amount FROM credit_lots
                   WHERE transaction_id IS NOT NULL GROUP BY 1, 2) l
             USING (transaction_id, account_id)
        WHERE coalesce(e.amount, 0) <> coalesce(l.amount, 0)
        """,
    ),
    "lot_expiry_overdue": (
        "no lot keeps tokens it does not hold a minute past its expiry (one that does means no sweeper runs)",
        """
        SELECT l.id, l.remaining - l.held AS detail FROM credit_lots l
        WHERE l.expires_at < now() - interval '1 minute' AND NOT l.spent AND l.remaining > l.held
        """,
    ),
    "rollup_mismatch": (
        "the journal's rollup equals the sealed entries it sums (each span, bucket, tenant and kinds)",
        rollup.RECONCILE_SQL,
    ),
    "recharge_batch_mismatch": (
        "each applied batch's recorded total equals its transaction",
        """
        SELECT b.id, b.total_amount - coalesce(t.amount, 0) AS detail
        FROM recharge_batches b LEFT JOIN ledger_transactions t ON t.batch_id = b.id
        WHERE b.total_amount <> coalesce(t.amount, 0)
        """,
    ),
}


@dataclass(slots=True)
class Discrepancy:
    check: str
    description: str
    ids: list[Any]
    details: list[Any]


@dataclass(slots=True)
class ReconciliationReport:
    checks_run: list[str] = field(default_factory=list)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return not self.discrepancies


def _plain(value: Any) -> Any:
    """Postgres sums bigints into numeric: report a whole number as int (7), not Decimal('7') or "7" in JSON."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def reconcile(
    session: Session, *, sample: int = 50, extra_checks: Mapping[str, tuple[str, str]] | None = None
) -> ReconciliationReport:
    """Run every check in one REPEATABLE READ snapshot when the caller's session allows it. `extra_checks` (same
    shape as CHECKS) lets the service add checks over its own tables, e.g. that jobs agree with their holds."""
    report = ReconciliationReport()
    # Every check compares whole tables, which hash and merge joins do in one pass each. Right after a bulk load,
    # before autovacuum has analysed it, the planner can take a 100,000-row table for a few rows and nest a
    # per-account aggregate inside a loop over the accounts: quadratic, minutes instead of a fraction of a
    # second. So nested loops are off for the checks, and the transaction's own setting comes back after them (a
    # check that fails aborts the transaction, which undoes the setting anyway).
    previous = session.execute(text("SELECT current_setting('enable_nestloop')")).scalar_one()
    session.execute(text("SELECT set_config('enable_nestloop', 'off', true)"))
    for name, (description, query) in {**CHECKS, **(extra_checks or {})}.items():
        rows = session.execute(text(f"SELECT * FROM ({query}) q ORDER BY 1 LIMIT :n"), {"n": sample}).all()
        report.checks_run.append(name)
        if rows:
            report.discrepancies.append(
                Discrepancy(
                    check=name, description=description, ids=[r[0] for r in rows], details=[_plain(r[1]) for r in rows]
                )
            )
    session.execute(text("SELECT set_config('enable_nestloop', :value, true)"), {"value": previous})
    totals = session.execute(
        text(
            """
            SELECT
              coalesce((SELECT sum(amount) FROM ledger_entries), 0) AS journal_sum,
              coalesce((SELECT -sum(e.amount) FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
                        WHERE a.kind = 'issuance'), 0) AS issued,
              coalesce((SELECT sum(e.amount) FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
                        WHERE a.kind = 'usage_revenue'), 0) AS consumed,
              coalesce((SELECT sum(balance) FROM ledger_accounts WHERE balance_tracked), 0) AS outstanding,
              coalesce((SELECT sum(held) FROM ledger_accounts WHERE balance_tracked), 0) AS held,
              coalesce((SELECT -sum(e.amount) FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
                        WHERE a.kind = 'adjustments'), 0) AS adjusted,
              coalesce((SELECT sum(e.amount) FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
                        WHERE a.kind = 'expired'), 0) AS expired
            """
        )
    ).one()
    report.totals = {k: int(v) for k, v in totals._mapping.items()}
    if report.totals["journal_sum"] != 0:
        report.discrepancies.append(
            Discrepancy("journal_unbalanced", "all entries together sum to zero", [], [report.totals["journal_sum"]])
        )
    # Conservation: what was issued or adjusted in is still outstanding on accounts, consumed, or expired.
    created = report.totals["issued"] + report.totals["adjusted"]
    gone = report.totals["outstanding"] + report.totals["consumed"] + report.totals["expired"]
    if created != gone:
        report.discrepancies.append(
            Discrepancy(
                "tokens_not_conserved", "issued + adjusted = outstanding + consumed + expired", [], [created - gone]
            )
        )
    return report
