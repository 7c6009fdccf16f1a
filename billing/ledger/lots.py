"""Credit lots: which of a tracked account's tokens are which. Every credit to a user or pool lands in lots, every
debit burns lots in the burn order (priority, soonest expiry with none last, oldest) and records what it burned,
and the journal stays the only source of truth for balances: an account's lots add up to its balance (remaining)
and held tokens (held), which reconciliation proves (billing.reports.reconcile).

Lots are written by the statement after a posting's own (`record_posting`, `record_batch`): the posting's
statement locks the accounts it moves, so the lots statement reads the lots as they are (every writer of an
account's lots holds the account's row lock while it writes them). Holds allocate and burn lots in the reserve and
capture functions (migration 0010) and give them back in `billing.ledger.holds`' release. Expired tokens leave
through `expire_due_lots`, the sweeper's.

Services never commit: the caller's request or job boundary does."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.errors import LedgerInconsistent
from billing.ledger.orm import PAID_PRIORITY, AccountKind, LotSource, TransactionKind
from billing.ledger.schemas import Expiry, Lot, LotTerms, NextExpiry

# The burn order on a lot aliased `l` (ascending puts NULL, no expiry, last). `ix_credit_lots_burn_order` follows it.
BURN_ORDER = "l.priority, l.expires_at, l.created_at, l.id"
# The lot source a plain credit gets from its transaction's kind.
SOURCE_OF_KIND = {
    TransactionKind.recharge: LotSource.recharge,
    TransactionKind.adjustment: LotSource.adjustment,
    TransactionKind.reversal: LotSource.reversal,
}
EXPIRY_ACTOR = "system:expiry"
_EXPIRY_HASH = hashlib.sha256(b"expiry").digest()


def _burn(debits: str, *, first: str = "NULL") -> str:
    """CTEs burning lots for the debits in `debits` (account_id, need, start): `burn` (the lots each debit takes,
    in burn order, only from what they do not hold, with where each piece starts on the line of all the debits),
    then the lots lowered and the consumptions recorded for `:txn`. The lots credited by the transaction `first`
    (a reversal's original) burn before any other."""
    return f"""
    candidates AS (
        SELECT l.id, l.account_id, l.priority, l.expires_at, l.remaining - l.held AS free, d.need, d.start AS line,
               sum(l.remaining - l.held) OVER (
                   PARTITION BY l.account_id
                   ORDER BY coalesce(l.transaction_id = {first}, false) DESC, {BURN_ORDER}
               ) AS upto
        FROM credit_lots l JOIN {debits} d ON d.account_id = l.account_id
        WHERE NOT l.spent AND l.remaining > l.held
    ),
    burn AS (
        SELECT id, account_id, priority, expires_at, least(free, need - (upto - free)) AS amount,
               line + upto - free AS start
        FROM candidates WHERE upto - free < need
    ),
    burned AS (
        UPDATE credit_lots l SET remaining = l.remaining - b.amount FROM burn b WHERE l.id = b.id
    ),
    consumed AS (
        INSERT INTO lot_consumptions (transaction_id, account_id, lot_id, amount)
        SELECT :txn, b.account_id, b.id, b.amount FROM burn b
    ),"""


def _overlap(credit: str, piece: str) -> str:
    """Tokens a credit and a piece share on their line (both have `start` and `amount`)."""
    ends = f"least({credit}.start + {credit}.amount, {piece}.start + {piece}.amount)"
    return f"{ends} - greatest({credit}.start, {piece}.start)"


def _overlaps(credit: str, piece: str) -> str:
    return f"{piece}.start < {credit}.start + {credit}.amount AND {credit}.start < {piece}.start + {piece}.amount"


# A posting's lots (`record_posting`). Debits burn lots; credits get lots:
# - a reversal's credit on an account mirrors the lots its original burned on that account (their priority and
#   expiry come back, so a refund restores the tokens as they were; lots burned before lots existed: a plain lot);
# - otherwise a credit laid along the tracked debits of the same transaction (a pool handing tokens to a user)
#   mirrors the pieces of the lots they burned that it lines up with, so expiry is not laundered by a transfer: the
#   given priority, else the piece's; the sooner of the given expiry and the piece's;
# - the rest (tokens from a system account): one plain lot with the given terms.
_POST_LOTS_SQL = text(
    f"""
WITH legs AS (
    SELECT l.account_id, l.amount, a.tenant_id
    FROM unnest(CAST(:accounts AS bigint[]), CAST(:amounts AS bigint[])) AS l(account_id, amount)
    JOIN ledger_accounts a ON a.id = l.account_id AND a.balance_tracked
),
debits AS (
    SELECT account_id, -amount AS need,
           coalesce(sum(-amount) OVER (ORDER BY account_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
               AS start
    FROM legs WHERE amount < 0
),
{_burn("debits", first="CAST(:reverses AS bigint)")}
credits AS (
    SELECT account_id, tenant_id, amount,
           CASE WHEN CAST(:reverses AS bigint) IS NULL THEN 0 ELSE account_id END AS grp,
           CASE WHEN CAST(:reverses AS bigint) IS NULL THEN coalesce(
               sum(amount) OVER (ORDER BY account_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0
           ) ELSE 0 END AS start
    FROM legs WHERE amount > 0
),
pieces AS (
    SELECT 0 AS grp, b.start, b.amount, b.priority, b.expires_at FROM burn b WHERE CAST(:reverses AS bigint) IS NULL
    UNION ALL
    SELECT l.account_id, sum(c.amount) OVER (PARTITION BY l.account_id ORDER BY {BURN_ORDER}) - c.amount, c.amount,
           l.priority, l.expires_at
    FROM lot_consumptions c JOIN credit_lots l ON l.id = c.lot_id
    WHERE c.transaction_id = CAST(:reverses AS bigint) AND c.account_id IN (SELECT account_id FROM credits)
),
mirrored AS (
    SELECT c.account_id, c.tenant_id, coalesce(CAST(:priority AS integer), p.priority) AS priority,
           least(CAST(:expires_at AS timestamptz), p.expires_at) AS expires_at, sum({_overlap("c", "p")}) AS amount
    FROM credits c JOIN pieces p ON p.grp = c.grp AND {_overlaps("c", "p")}
    GROUP BY 1, 2, 3, 4
),
plain AS (
    SELECT c.account_id, c.tenant_id, c.amount - coalesce(m.amount, 0) AS amount
    FROM credits c
    LEFT JOIN (SELECT account_id, sum(amount) AS amount FROM mirrored GROUP BY account_id) m USING (account_id)
),
written AS (
    INSERT INTO credit_lots
        (account_id, tenant_id, source, priority, effective_at, expires_at, amount, remaining, transaction_id)
    SELECT account_id, tenant_id,
           CASE WHEN CAST(:reverses AS bigint) IS NULL THEN '{LotSource.transfer.value}'
                ELSE '{LotSource.reversal.value}' END,
           priority, now(), expires_at, amount, amount, :txn
    FROM mirrored
    UNION ALL
    SELECT account_id, tenant_id, :source, coalesce(CAST(:priority AS integer), {PAID_PRIORITY}),
           least(coalesce(CAST(:effective_at AS timestamptz), now()), now()), CAST(:expires_at AS timestamptz),
           amount, amount, :txn
    FROM plain WHERE amount > 0
    RETURNING amount
)
SELECT (SELECT coalesce(sum(amount), 0) FROM burn) AS burned, (SELECT coalesce(sum(need), 0) FROM debits) AS debited,
       (SELECT coalesce(sum(amount), 0) FROM written) AS credited,
       (SELECT coalesce(sum(amount), 0) FROM credits) AS to_credit
"""
)


def record_posting(
    session: Session,
    *,
    transaction_id: int,
    kind: TransactionKind,
    legs: Sequence[tuple[int, int]],
    terms: LotTerms | None,
    reverses_transaction_id: int | None,
) -> None:
    """The lots of a posting just made (its statement holds the accounts' row locks): debits burn, credits land."""
    terms = terms or LotTerms()
    source = terms.source or SOURCE_OF_KIND.get(kind, LotSource.adjustment)
    row = session.execute(
        _POST_LOTS_SQL,
        {
            "txn": transaction_id,
            "accounts": [account for account, _ in legs],
            "amounts": [amount for _, amount in legs],
            "reverses": reverses_transaction_id,
            "priority": terms.priority,
            "expires_at": terms.expires_at,
            "effective_at": terms.effective_at,
            "source": str(source),
        },
    ).one()
    _check(row.burned, row.debited, row.credited, row.to_credit, transaction_id)


# A batch's lots (`record_batch`), its rows in `recharge_stage` (account_id, amount, row_no, priority, expires_at).
_BATCH_FROM_ISSUANCE_SQL = f"""
WITH written AS (
    INSERT INTO credit_lots
        (account_id, tenant_id, source, priority, effective_at, expires_at, amount, remaining, transaction_id)
    SELECT s.account_id, a.tenant_id, :lot_source, coalesce(s.priority, {PAID_PRIORITY}), now(),
           s.expires_at, s.amount, s.amount, :txn
    FROM {{stage}} s JOIN ledger_accounts a ON a.id = s.account_id
    RETURNING amount
)
SELECT 0 AS burned, 0 AS debited, (SELECT coalesce(sum(amount), 0) FROM written) AS credited,
       (SELECT coalesce(sum(amount), 0) FROM {{stage}}) AS to_credit
"""

# From a pool: the pool's lots burn for the total, and the rows, laid along it in row order, mirror the pieces they
# line up with (as a posting's transfer does).
_BATCH_FROM_POOL_SQL = f"""
WITH debits AS (SELECT CAST(:source AS bigint) AS account_id, CAST(:total AS bigint) AS need, 0 AS start),
{_burn("debits")}
rows AS (
    SELECT s.account_id, s.amount, s.priority, s.expires_at, sum(s.amount) OVER (ORDER BY s.row_no) - s.amount AS start
    FROM {{stage}} s
),
mirrored AS (
    SELECT r.account_id, coalesce(r.priority, p.priority) AS priority, least(r.expires_at, p.expires_at) AS expires_at,
           sum({_overlap("r", "p")}) AS amount
    FROM rows r JOIN burn p ON {_overlaps("r", "p")}
    GROUP BY 1, 2, 3
),
written AS (
    INSERT INTO credit_lots
        (account_id, tenant_id, source, priority, effective_at, expires_at, amount, remaining, transaction_id)
    SELECT m.account_id, a.tenant_id, :lot_source, m.priority, now(), m.expires_at, m.amount,
           m.amount, :txn
    FROM mirrored m JOIN ledger_accounts a ON a.id = m.account_id
    RETURNING amount
)
SELECT (SELECT coalesce(sum(amount), 0) FROM burn) AS burned, CAST(:total AS bigint) AS debited,
       (SELECT coalesce(sum(amount), 0) FROM written) AS credited, CAST(:total AS bigint) AS to_credit
"""


def record_batch(
    session: Session,
    *,
    transaction_id: int,
    stage: str,
    source_account_id: int,
    source_tracked: bool,
    total: int,
    source: LotSource | None = None,
) -> None:
    """The lots of a batch just applied (its statement holds the accounts' row locks), set-based whatever its size:
    one lot per row from issuance, or the rows' share of the pool's lots from a pool. `source` names the lots'
    source (default `recharge` from issuance, `transfer` from a pool; recurring grants say `grant`)."""
    sql = (_BATCH_FROM_POOL_SQL if source_tracked else _BATCH_FROM_ISSUANCE_SQL).format(stage=stage)
    lot_source = source or (LotSource.transfer if source_tracked else LotSource.recharge)
    row = session.execute(
        text(sql),
        {"txn": transaction_id, "source": source_account_id, "total": total, "lot_source": lot_source.value},
    ).one()
    _check(row.burned, row.debited, row.credited, row.to_credit, transaction_id)


def _check(burned: int, debited: int, credited: int, to_credit: int, transaction_id: int) -> None:
    if burned != debited or credited != to_credit:
        # The debited accounts' lots no longer add up to their balances: refuse (the boundary rolls back).
        raise LedgerInconsistent(
            f"transaction {transaction_id}: lots burned {burned} of {debited} debited tokens and received "
            f"{credited} of {to_credit} credited; run the reconciliation"
        )


# --- expiry -------------------------------------------------------------------------------------------------------

# The accounts with lots due, locked: one the money path holds right now is skipped (SKIP LOCKED) and expired by a
# later sweep, so an expiry never waits on a capture and a capture waits at most for one expiry statement.
_DUE_ACCOUNTS_SQL = text(
    """
SELECT a.id FROM ledger_accounts a
WHERE a.id IN (
    SELECT l.account_id FROM credit_lots l
    WHERE l.expires_at <= now() AND NOT l.spent AND l.remaining > l.held
    ORDER BY l.expires_at
    LIMIT :limit
) AND a.balance_tracked
ORDER BY a.id
FOR NO KEY UPDATE SKIP LOCKED
"""
)

# Under those locks (a statement of its own: its snapshot sees the lots as their lock holders left them): per account,
# one `expiry` transaction of what its due lots do not hold, entries account -> expired, the balance lowered with
# its entry, the lots lowered to what they hold, the consumptions recorded. Held tokens stay with their hold: a
# capture burns them, a release leaves them for the next sweep.
_EXPIRE_SQL = text(
    f"""
WITH due AS (
    SELECT l.id, l.account_id, l.remaining - l.held AS amount
    FROM credit_lots l
    WHERE l.account_id = ANY(CAST(:accounts AS bigint[])) AND l.expires_at <= now() AND NOT l.spent
      AND l.remaining > l.held
),
per_account AS (
    SELECT d.account_id, a.tenant_id, '{TransactionKind.expiry.value}:' || a.id || ':' || a.version AS key,
           sum(d.amount) AS amount
    FROM due d JOIN ledger_accounts a ON a.id = d.account_id
    GROUP BY d.account_id, a.tenant_id, a.id, a.version
),
txn AS (
    INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, amount, tenant_id, actor, reason)
    SELECT '{TransactionKind.expiry.value}', p.key, :hash, p.amount, p.tenant_id, '{EXPIRY_ACTOR}',
           'credit lots reached their expiry'
    FROM per_account p
    RETURNING id, idempotency_key
),
posted AS (SELECT p.*, t.id AS transaction_id FROM per_account p JOIN txn t ON t.idempotency_key = p.key),
moved AS (
    UPDATE ledger_accounts a SET balance = a.balance - p.amount, version = a.version + 1
    FROM posted p WHERE a.id = p.account_id
    RETURNING a.id, a.balance
),
entries AS (
    INSERT INTO ledger_entries (transaction_id, account_id, amount, balance_after)
    SELECT p.transaction_id, p.account_id, -p.amount, m.balance FROM posted p JOIN moved m ON m.id = p.account_id
    UNION ALL
    SELECT p.transaction_id, x.id, p.amount, NULL FROM posted p,
           (SELECT id FROM ledger_accounts WHERE kind = '{AccountKind.expired.value}' AND NOT balance_tracked) x
    RETURNING 1
),
lowered AS (
    UPDATE credit_lots l SET remaining = l.remaining - d.amount FROM due d, posted p
    WHERE l.id = d.id AND p.account_id = d.account_id
),
consumed AS (
    INSERT INTO lot_consumptions (transaction_id, account_id, lot_id, amount)
    SELECT p.transaction_id, d.account_id, d.id, d.amount FROM due d JOIN posted p ON p.account_id = d.account_id
)
SELECT p.account_id, p.transaction_id, p.amount, (SELECT count(*) FROM entries) AS entries
FROM posted p ORDER BY p.account_id
"""
)


def expire_due_lots(session: Session, *, limit: int = 500) -> list[Expiry]:
    """Expire what the lots past their expiry do not hold, on at most `limit` lots' accounts: one `expiry`
    transaction per account, to the `expired` system account. Several sweepers can run at once (SKIP LOCKED); the
    idempotency key (`expiry:<account>:<version>`) is the account's state, so a retry never expires twice."""
    accounts = list(session.execute(_DUE_ACCOUNTS_SQL, {"limit": limit}).scalars())
    if not accounts:
        return []
    rows = session.execute(_EXPIRE_SQL, {"accounts": accounts, "hash": _EXPIRY_HASH}).all()
    if rows and rows[0].entries != 2 * len(rows):
        raise LedgerInconsistent("the expired system account is missing: run the migrations")
    return [Expiry(account_id=r.account_id, transaction_id=r.transaction_id, amount=r.amount) for r in rows]


# --- reading -------------------------------------------------------------------------------------------------------

_LOT_COLUMNS = (
    "l.id AS lot_id, l.account_id, l.source, l.priority, l.effective_at, l.expires_at, l.amount, l.remaining, l.held, "
    "l.transaction_id, l.created_at"
)


def account_lots(session: Session, *, account_ids: Sequence[int], limit: int = 50) -> dict[int, list[Lot]]:
    """Each account's lots with tokens left, in burn order (the first `limit` of each)."""
    rows = session.execute(
        text(
            f"""
            SELECT * FROM (
                SELECT {_LOT_COLUMNS}, row_number() OVER (PARTITION BY l.account_id ORDER BY {BURN_ORDER}) AS n
                FROM credit_lots l WHERE l.account_id = ANY(CAST(:ids AS bigint[])) AND NOT l.spent
            ) x WHERE n <= :limit ORDER BY account_id, n
            """
        ),
        {"ids": list(account_ids), "limit": limit},
    )
    lots: dict[int, list[Lot]] = defaultdict(list)
    for r in rows:
        lots[r.account_id].append(Lot(**{k: v for k, v in r._mapping.items() if k != "n"}))
    return dict(lots)


def next_expiries(session: Session, *, account_ids: Sequence[int]) -> dict[int, NextExpiry]:
    """Per account, its soonest expiry among lots with tokens left and the tokens that expire then unless spent."""
    rows = session.execute(
        text(
            """
            SELECT DISTINCT ON (l.account_id) l.account_id, l.expires_at, sum(l.remaining) AS amount
            FROM credit_lots l
            WHERE l.account_id = ANY(CAST(:ids AS bigint[])) AND NOT l.spent AND l.expires_at IS NOT NULL
            GROUP BY l.account_id, l.expires_at
            ORDER BY l.account_id, l.expires_at
            """
        ),
        {"ids": list(account_ids)},
    )
    return {r.account_id: NextExpiry(expires_at=r.expires_at, amount=int(r.amount)) for r in rows}


def lots_of_transaction(session: Session, *, transaction_id: int) -> list[Lot]:
    """The lots a transaction's credits made."""
    rows = session.execute(
        text(f"SELECT {_LOT_COLUMNS} FROM credit_lots l WHERE l.transaction_id = :id ORDER BY l.id"),
        {"id": transaction_id},
    )
    return [Lot(**r._mapping) for r in rows]


def consumptions(session: Session, *, transaction_id: int) -> dict[int, int]:
    """What a debit burned: lot id -> tokens."""
    rows = session.execute(
        text("SELECT lot_id, amount FROM lot_consumptions WHERE transaction_id = :id ORDER BY lot_id"),
        {"id": transaction_id},
    )
    return {r.lot_id: r.amount for r in rows}


def hold_allocations(session: Session, *, hold_id: int) -> dict[int, int]:
    """The lots a hold reserved from: lot id -> tokens."""
    rows = session.execute(
        text("SELECT lot_id, amount FROM hold_lot_allocations WHERE hold_id = :id ORDER BY lot_id"), {"id": hold_id}
    )
    return {r.lot_id: r.amount for r in rows}
