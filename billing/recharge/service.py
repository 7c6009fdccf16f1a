"""Set-based batch recharge. The caller stages the valid rows (account, amount, row number, reference, and the
lot terms: priority and expiry) in the `recharge_stage` temporary table; applying them is a handful of statements
whatever the row count."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.errors import IdempotencyConflict, InsufficientTokens, InvalidAmount
from billing.ledger import lots
from billing.ledger.orm import MAX_PRIORITY, MIN_PRIORITY
from billing.ledger.service import database_refusals

STAGE_TABLE = "recharge_stage"
# Batches are serialised with one transaction-scoped advisory lock: two overlapping batches would otherwise
# lock the same accounts in different orders and deadlock. A batch holds it for as long as it applies (and so does
# each recurring grant's credit, billing.grants.service, for the same reason).
BATCH_LOCK_KEY = 0x46_4D_42_41_54_43_48  # "FMBATCH"


@dataclass(frozen=True, slots=True)
class StoredBatch:
    batch_id: int
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    batch_id: int
    transaction_id: int | None
    applied: int
    total_amount: int


def create_stage(session: Session) -> str:
    """The temporary table the caller fills with valid rows; dropped at commit or rollback."""
    session.execute(
        text(
            f"CREATE TEMP TABLE {STAGE_TABLE} (row_no integer NOT NULL, account_id bigint NOT NULL, "
            "amount bigint NOT NULL CHECK (amount > 0), reference text, "
            f"priority integer CHECK (priority BETWEEN {MIN_PRIORITY} AND {MAX_PRIORITY}), expires_at timestamptz) "
            "ON COMMIT DROP"
        )
    )
    return STAGE_TABLE


def stage_totals(session: Session) -> tuple[int, int]:
    row = session.execute(text(f"SELECT count(*), coalesce(sum(amount), 0) FROM {STAGE_TABLE}")).one()
    return int(row[0]), int(row[1])


def find_batch(session: Session, *, idempotency_key: str, request_hash: bytes) -> StoredBatch | None:
    """The stored result of an already applied batch, or None. A different request under the same key is
    refused."""
    row = session.execute(
        text("SELECT id, request_hash, result FROM recharge_batches WHERE idempotency_key = :key"),
        {"key": idempotency_key},
    ).one_or_none()
    if row is None:
        return None
    if bytes(row.request_hash) != request_hash:
        raise IdempotencyConflict("this idempotency key was already used for a different batch")
    return StoredBatch(batch_id=row.id, result=row.result)


def begin_batch(
    session: Session,
    *,
    idempotency_key: str,
    request_hash: bytes,
    mode: str,
    tenant_id: int | None,
    actor: str,
    reason: str,
    source_account_id: int,
    row_count: int,
) -> int | StoredBatch:
    """Claim the idempotency key for a new batch. A concurrent request with the same key waits here until the
    first commits, then gets the stored batch back instead of applying it twice."""
    batch_id = session.execute(
        text(
            """
            INSERT INTO recharge_batches
                (idempotency_key, request_hash, mode, tenant_id, actor, reason, source_account_id,
                 row_count, applied_count, failed_count, total_amount, result)
            VALUES (:key, :hash, :mode, :tenant_id, :actor, :reason, :source, :rows, 0, 0, 0, '{}')
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
            """
        ),
        {
            "key": idempotency_key,
            "hash": request_hash,
            "mode": mode,
            "tenant_id": tenant_id,
            "actor": actor,
            "reason": reason,
            "source": source_account_id,
            "rows": row_count,
        },
    ).scalar_one_or_none()
    if batch_id is not None:
        return int(batch_id)
    stored = find_batch(session, idempotency_key=idempotency_key, request_hash=request_hash)
    assert stored is not None  # the conflicting row committed before ON CONFLICT could see it
    return stored


def apply_staged(
    session: Session,
    *,
    batch_id: int,
    request_hash: bytes,
    tenant_id: int | None,
    actor: str,
    reason: str,
    source_account_id: int,
    source_tracked: bool,
) -> AppliedBatch:
    """Credit every staged row and debit the source once, as one balanced transaction."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BATCH_LOCK_KEY})
    applied, total = stage_totals(session)
    if applied == 0:
        return AppliedBatch(batch_id=batch_id, transaction_id=None, applied=0, total_amount=0)
    with database_refusals():
        # One statement: the source (a tenant's pool, when tracked) is debited with a guard, every staged row
        # credited, and all the entries written, so the accounts never differ from the journal between two
        # statements (a database rule: `ledger_accounts_follow_journal`). The pool's row is locked first.
        row = session.execute(
            text(
                f"""
                WITH debited AS (
                    UPDATE ledger_accounts SET balance = balance - :total, version = version + 1
                    WHERE id = :source AND :tracked AND balance - held >= :total
                    RETURNING id, balance
                ),
                txn AS (
                    INSERT INTO ledger_transactions
                        (kind, idempotency_key, request_hash, amount, tenant_id, actor, reason, batch_id)
                    SELECT 'recharge', 'batch:' || :batch_id, :hash, :total, :tenant_id, :actor, :reason, :batch_id
                    WHERE NOT :tracked OR EXISTS (SELECT 1 FROM debited)
                    RETURNING id
                ),
                credited AS (
                    UPDATE ledger_accounts a SET balance = a.balance + s.amount, version = a.version + 1
                    FROM {STAGE_TABLE} s, txn
                    WHERE a.id = s.account_id AND a.balance_tracked
                    RETURNING a.id, a.balance, s.amount, s.row_no, s.reference
                ),
                entries AS (
                    INSERT INTO ledger_entries
                        (transaction_id, account_id, amount, balance_after, row_no, reference)
                    SELECT txn.id, c.id, c.amount, c.balance, c.row_no, c.reference FROM txn, credited c
                    UNION ALL
                    SELECT txn.id, :source, -CAST(:total AS bigint), (SELECT balance FROM debited), NULL, NULL
                    FROM txn
                    RETURNING 1
                )
                SELECT (SELECT id FROM txn) AS transaction_id, (SELECT count(*) FROM entries) AS n_entries,
                       (SELECT balance - held FROM ledger_accounts WHERE id = :source) AS source_available
                """
            ),
            {
                "batch_id": batch_id,
                "hash": request_hash,
                "total": total,
                "tenant_id": tenant_id,
                "actor": actor,
                "reason": reason,
                "source": source_account_id,
                "tracked": source_tracked,
            },
        ).one()
    if row.transaction_id is None:
        # The pool's guard refused: nothing was written. (The figure is the pool before this statement.)
        raise InsufficientTokens(
            f"the pool holds {row.source_available} tokens; this batch needs {total}",
            needed=total,
            available=row.source_available,
        )
    if row.n_entries != applied + 1:
        # A staged account vanished or is not a tracked account: refuse the batch rather than half-apply it.
        raise InvalidAmount("a staged row did not match a user account; nothing was applied")
    # The rows' lots, set-based, under the row locks the statement above took.
    with database_refusals():
        lots.record_batch(
            session,
            transaction_id=row.transaction_id,
            stage=STAGE_TABLE,
            source_account_id=source_account_id,
            source_tracked=source_tracked,
            total=total,
        )
    return AppliedBatch(batch_id=batch_id, transaction_id=row.transaction_id, applied=applied, total_amount=total)


def finish_batch(
    session: Session,
    *,
    batch_id: int,
    applied: int,
    failed: int,
    total_amount: int,
    result: dict[str, Any],
) -> None:
    session.execute(
        text(
            "UPDATE recharge_batches SET applied_count = :applied, failed_count = :failed, "
            "total_amount = :total, result = CAST(:result AS jsonb) WHERE id = :id"
        ),
        {
            "id": batch_id,
            "applied": applied,
            "failed": failed,
            "total": total_amount,
            "result": json.dumps(result),
        },
    )


def list_batches(session: Session, *, tenant_id: int | None, before_id: int | None, limit: int) -> list[dict[str, Any]]:
    """Newest first; `tenant_id` limits the list to one tenant's batches."""
    rows = session.execute(
        text(
            """
            SELECT id, mode, tenant_id, actor, reason, source_account_id, row_count, applied_count, failed_count,
                   total_amount, created_at
            FROM recharge_batches
            WHERE (CAST(:tenant_id AS bigint) IS NULL OR tenant_id = :tenant_id)
              AND (CAST(:before_id AS bigint) IS NULL OR id < :before_id)
            ORDER BY id DESC
            LIMIT :limit
            """
        ),
        {"tenant_id": tenant_id, "before_id": before_id, "limit": limit},
    )
    return [dict(r._mapping) for r in rows]


def get_batch(session: Session, *, batch_id: int) -> dict[str, Any] | None:
    row = session.execute(
        text(
            "SELECT id, mode, tenant_id, actor, reason, source_account_id, row_count, applied_count, failed_count, "
            "total_amount, created_at, result FROM recharge_batches WHERE id = :id"
        ),
        {"id": batch_id},
    ).one_or_none()
    return dict(row._mapping) if row is not None else None
