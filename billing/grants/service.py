"""Crediting one grant's period to a staged set of accounts, set-based: one ledger transaction for the whole set
(one statement for the journal, whatever its size), one award per account (`grant_awards`, whose primary key makes
each (grant, period, account) once-only), and the accounts' lots (source `grant`, the grant's priority, expiring
at the period's end) in one more statement.

The caller stages the accounts in the `grant_stage` temporary table (`create_stage`): which accounts are eligible
is the service's to say (billing never reads its tables). Services never commit: the caller's job boundary does."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.errors import InvalidAmount
from billing.grants.errors import GrantAlreadyAwarded
from billing.grants.schemas import GrantApplied
from billing.ledger import lots
from billing.ledger.orm import MAX_PRIORITY, MIN_PRIORITY, LotSource
from billing.ledger.service import database_refusals
from billing.recharge.service import BATCH_LOCK_KEY

STAGE_TABLE = "grant_stage"
# The awards' primary key, and the ledger's idempotency key (which embeds the set's first account): either refuses
# a second credit of an account for the same grant and period.
_ONCE_ONLY = ("pk_grant_awards", "uq_ledger_transactions_idempotency_key")


def create_stage(session: Session) -> str:
    """The temporary table the caller fills with the accounts to credit (`row_no` from 1 in account order, the
    amount, the lots' priority and expiry); dropped at commit or rollback."""
    session.execute(
        text(
            f"CREATE TEMP TABLE {STAGE_TABLE} (row_no integer NOT NULL, account_id bigint PRIMARY KEY, "
            "amount bigint NOT NULL CHECK (amount > 0), "
            f"priority integer NOT NULL CHECK (priority BETWEEN {MIN_PRIORITY} AND {MAX_PRIORITY}), "
            "expires_at timestamptz NOT NULL) ON COMMIT DROP"
        )
    )
    return STAGE_TABLE


def transaction_key(*, grant_id: int, period_start: datetime, first_account_id: int) -> str:
    """The ledger idempotency key of one credited set: unique because each account is awarded once per grant and
    period, so no two sets of a (grant, period) that were both written share their first account."""
    return f"grant:{grant_id}:{period_start.astimezone(UTC):%Y-%m-%dT%H:%MZ}:{first_account_id}"


def apply_staged(
    session: Session,
    *,
    grant_id: int,
    period_start: datetime,
    source_account_id: int,
    source_tracked: bool,
    tenant_id: int | None,
    actor: str,
    reason: str,
) -> GrantApplied:
    """Credit every staged account from the source (the issuance account, or a tenant's pool when tracked) as one
    balanced `recharge` transaction, award each, and write their lots. A pool that cannot cover the whole set
    writes nothing and says what it had (`GrantApplied.pool_available`): the caller records the shortfall."""
    row = session.execute(
        text(f"SELECT count(*) AS n, coalesce(sum(amount), 0) AS total, min(account_id) AS first FROM {STAGE_TABLE}")
    ).one()
    accounts, total = int(row.n), int(row.total)
    if accounts == 0:
        return GrantApplied(transaction_id=None, accounts=0, total=0)
    key = transaction_key(grant_id=grant_id, period_start=period_start, first_account_id=row.first)
    # Grants, batches and each other: many accounts locked per statement, in no set order, so they queue behind one
    # lock rather than deadlock (see billing.recharge.service).
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BATCH_LOCK_KEY})
    try:
        with database_refusals():
            posted = session.execute(
                text(
                    f"""
                    WITH debited AS (
                        UPDATE ledger_accounts SET balance = balance - :total, version = version + 1
                        WHERE id = :source AND :tracked AND balance - held >= :total
                        RETURNING id, balance
                    ),
                    txn AS (
                        INSERT INTO ledger_transactions
                            (kind, idempotency_key, request_hash, amount, tenant_id, actor, reason, reference)
                        SELECT 'recharge', :key, :hash, :total, :tenant_id, :actor, :reason, :reference
                        WHERE NOT :tracked OR EXISTS (SELECT 1 FROM debited)
                        RETURNING id
                    ),
                    credited AS (
                        UPDATE ledger_accounts a SET balance = a.balance + s.amount, version = a.version + 1
                        FROM {STAGE_TABLE} s, txn
                        WHERE a.id = s.account_id AND a.balance_tracked
                        RETURNING a.id, a.balance, s.amount, s.row_no
                    ),
                    entries AS (
                        INSERT INTO ledger_entries (transaction_id, account_id, amount, balance_after, row_no)
                        SELECT txn.id, c.id, c.amount, c.balance, c.row_no FROM txn, credited c
                        UNION ALL
                        SELECT txn.id, :source, -CAST(:total AS bigint), (SELECT balance FROM debited), NULL FROM txn
                        RETURNING 1
                    )
                    SELECT (SELECT id FROM txn) AS transaction_id, (SELECT count(*) FROM entries) AS n_entries,
                           (SELECT balance - held FROM ledger_accounts WHERE id = :source) AS source_available
                    """
                ),
                {
                    "total": total,
                    "source": source_account_id,
                    "tracked": source_tracked,
                    "key": key,
                    "hash": hashlib.sha256(f"{key}:{accounts}:{total}".encode()).digest(),
                    "tenant_id": tenant_id,
                    "actor": actor,
                    "reason": reason,
                    "reference": f"grant:{grant_id}",
                },
            ).one()
            if posted.transaction_id is None:
                # The pool's guard refused: nothing was written. (The figure is the pool before this statement.)
                return GrantApplied(
                    transaction_id=None, accounts=accounts, total=total, pool_available=posted.source_available
                )
            if posted.n_entries != accounts + 1:
                raise InvalidAmount("a staged account is not a user or pool account; nothing was granted")
            session.execute(
                text(
                    "INSERT INTO grant_awards (grant_id, period_start, account_id, amount, transaction_id) "
                    f"SELECT :grant_id, :period_start, account_id, amount, :txn FROM {STAGE_TABLE}"
                ),
                {"grant_id": grant_id, "period_start": period_start, "txn": posted.transaction_id},
            )
            lots.record_batch(
                session,
                transaction_id=posted.transaction_id,
                stage=STAGE_TABLE,
                source_account_id=source_account_id,
                source_tracked=source_tracked,
                total=total,
                source=LotSource.grant,
            )
    except IntegrityError as exc:
        if any(name in str(exc.orig) for name in _ONCE_ONLY):
            raise GrantAlreadyAwarded(
                f"grant {grant_id} was already credited for this period to a staged account; nothing was written"
            ) from exc
        raise
    return GrantApplied(transaction_id=posted.transaction_id, accounts=accounts, total=total)


def awarded(session: Session, *, grant_id: int, period_start: datetime) -> tuple[int, int]:
    """(accounts, tokens) the grant has credited for the period starting at `period_start`."""
    row = session.execute(
        text(
            "SELECT count(*), coalesce(sum(amount), 0) FROM grant_awards "
            "WHERE grant_id = :grant_id AND period_start = :period_start"
        ),
        {"grant_id": grant_id, "period_start": period_start},
    ).one()
    return int(row[0]), int(row[1])
