"""Low-balance alerts evaluated: each pass is one set-based statement in the caller's transaction, which moves
every alert it names that crossed a line and returns them.

- An armed alert whose account's available tokens (balance - held) are below its threshold fires: the statement
  disarms it (`armed AND available < threshold`, so a second evaluation, concurrent or later, finds nothing to
  fire until it re-arms) and a `balance.low` event is queued for the account's tenant
  (`webhooks.record_tenant_event`) in the same transaction. A tenant without an events URL gets no event; the
  alert still fires and disarms, so naming a URL later does not replay old crossings.
- A disarmed alert whose account's available reaches `threshold + hysteresis` re-arms.

Where it runs: right after the platform's movements, on the accounts they touched (recharges, batches,
adjustments, reversals: `evaluate_transaction`; a worker's settlement of a job, and an alert being set:
`evaluate_accounts`), and in every worker's sweeper over all alerts (`sweep`). The hold a submit reserves
lowers available without an evaluation (the submit path stays as it was): the job's settlement, or the next
sweep, fires the alert.

Locks: an evaluation after a movement locks only alerts of accounts whose rows that transaction already holds, so
two of them never wait on each other's alerts; the sweeper skips alerts another transaction holds (SKIP LOCKED)
and waits on nothing, and that transaction evaluates them itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.balance_alerts.schemas import BalanceLowData, BalanceLowEvent
from facemint.db import PreparedStatement
from facemint.webhooks import service as webhooks

logger = logging.getLogger("facemint.balance_alerts")
EVENT_TYPE = "balance.low"

# Whether an alert has crossed its line: below the threshold while armed, at or above the re-arm level while not.
_CROSSED = """
    CASE WHEN al.armed THEN a.balance - a.held < al.threshold
         ELSE a.balance - a.held >= al.threshold + al.hysteresis END
"""


def _moving(which: str, *, due: str = "") -> str:
    """The statement that flips every alert `which` selects (a condition on `al.account_id`) that crossed its
    line, returning each with what its event needs; `armed` is the new state (false: it fired)."""
    return f"""
        WITH {due}
        moved AS (
            UPDATE balance_alerts al
            SET armed = NOT al.armed,
                fired_at = CASE WHEN al.armed THEN now() ELSE al.fired_at END,
                rearmed_at = CASE WHEN al.armed THEN al.rearmed_at ELSE now() END
            FROM ledger_accounts a
            WHERE {which} AND a.id = al.account_id AND al.removed_at IS NULL AND {_CROSSED}
            RETURNING al.account_id, al.armed, al.threshold, al.hysteresis, al.fired_at, a.kind, a.tenant_id,
                      a.balance - a.held AS available
        )
        SELECT m.account_id, m.armed, m.threshold, m.hysteresis, m.fired_at, m.kind, m.tenant_id, m.available,
               u.id AS user_id
        FROM moved m LEFT JOIN users u ON u.account_id = m.account_id
    """


# Every job settlement runs this one: prepared once per connection, so Postgres plans it once.
_ACCOUNTS = PreparedStatement(
    "fm_balance_alerts_accounts", _moving("al.account_id = ANY(:account_ids)"), {"account_ids": "bigint[]"}
)
_TRANSACTION = text(
    _moving("al.account_id IN (SELECT account_id FROM ledger_entries WHERE transaction_id = :transaction_id)")
)
_SWEEP = text(
    _moving(
        "al.account_id IN (SELECT account_id FROM due)",
        due=f"""
            due AS (
                SELECT al.account_id FROM balance_alerts al JOIN ledger_accounts a ON a.id = al.account_id
                WHERE al.removed_at IS NULL AND {_CROSSED}
                ORDER BY al.account_id LIMIT :limit
                FOR UPDATE OF al SKIP LOCKED
            ),
        """,
    )
)


@dataclass(frozen=True, slots=True)
class Evaluated:
    fired: int = 0
    rearmed: int = 0
    queued: int = 0  # `balance.low` events queued (fired alerts whose tenant names an events URL)

    @property
    def moved(self) -> int:
        return self.fired + self.rearmed


def evaluate_accounts(session: Session, *, account_ids: Sequence[int]) -> Evaluated:
    """Evaluate the alerts of these accounts (after the caller moved their balances, in its transaction)."""
    if not account_ids:
        return Evaluated()
    return _apply(session, _ACCOUNTS.execute(session, {"account_ids": list(account_ids)}).all())


def evaluate_transaction(session: Session, *, transaction_id: int) -> Evaluated:
    """Evaluate the alerts of every account a ledger transaction has entries on (a recharge's two, a batch's
    pool and every user it credited)."""
    return _apply(session, session.execute(_TRANSACTION, {"transaction_id": transaction_id}).all())


def sweep(session: Session, *, limit: int) -> Evaluated:
    """The periodic pass: up to `limit` alerts, of any account, that crossed their line (skipping those another
    transaction is moving). Fewer than `limit` moved: none is left for now."""
    return _apply(session, session.execute(_SWEEP, {"limit": limit}).all())


def _apply(session: Session, rows: Sequence[Any]) -> Evaluated:
    fired = [row for row in rows if not row.armed]
    queued = 0
    for row in fired:
        if row.tenant_id is None:  # not set on such accounts (`AlertWithoutTenant`): nowhere to send one
            continue
        event = BalanceLowEvent(
            timestamp=row.fired_at,
            data=BalanceLowData(
                account=row.kind,
                tenant_id=row.tenant_id,
                user_id=row.user_id,
                available=row.available,
                threshold=row.threshold,
                rearm_at=row.threshold + row.hysteresis,
            ),
        )
        if webhooks.record_tenant_event(
            session, tenant_id=row.tenant_id, event_type=EVENT_TYPE, payload=event.model_dump(mode="json")
        ):
            queued += 1
    if rows:
        logger.info(
            "low-balance alerts: %d fired (%d events queued), %d re-armed", len(fired), queued, len(rows) - len(fired)
        )
    return Evaluated(fired=len(fired), rearmed=len(rows) - len(fired), queued=queued)
