"""Ledger operations. Each money movement is one SQL statement (one round trip): the idempotency row, the
guarded balance updates and the entries go together, so nothing is read, decided in Python and written back.

Services never commit: the caller's request or job boundary does. A raised error means the boundary must
roll back (a statement may already have inserted a header row that only the rollback removes)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from billing.errors import (
    AccountNotFound,
    AlreadyReversed,
    HoldAlreadyResolved,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
    LedgerContention,
    NotReversible,
    TransactionNotFound,
)
from billing.ledger.orm import AccountKind, TransactionKind
from billing.ledger.schemas import Balance, HoldResult, Posting

# Postgres SQLSTATEs that mean "the database refused, nothing was applied".
_CONTENTION_STATES = {"40P01", "40001", "55P03"}  # deadlock, serialization failure, lock not available
_CHECK_VIOLATION = "23514"


def request_hash(payload: Any) -> bytes:
    """Stable hash of a request body, used to tell a replay from a different request with the same key."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).digest()


@contextmanager
def database_refusals() -> Iterator[None]:
    """Turn the database's own refusals into typed errors (the caller rolls back)."""
    try:
        yield
    except DBAPIError as exc:
        state = getattr(exc.orig, "pgcode", None)
        if state in _CONTENTION_STATES:
            raise LedgerContention("the ledger was busy with a conflicting update; retry") from exc
        if state == _CHECK_VIOLATION and "available_nonnegative" in str(exc.orig):
            raise InsufficientTokens("not enough tokens available") from exc
        raise


# --- accounts -----------------------------------------------------------------------------------------


def open_account(session: Session, *, kind: AccountKind, tenant_id: int | None) -> int:
    if kind not in (AccountKind.user, AccountKind.tenant_pool):
        raise ValueError(f"only user and tenant_pool accounts are opened at run time, not {kind}")
    return int(
        session.execute(
            text(
                "INSERT INTO ledger_accounts (kind, tenant_id, balance_tracked) "
                "VALUES (:kind, :tenant_id, true) RETURNING id"
            ),
            {"kind": kind.value, "tenant_id": tenant_id},
        ).scalar_one()
    )


def assign_tenant(session: Session, *, account_id: int, tenant_id: int) -> None:
    session.execute(
        text("UPDATE ledger_accounts SET tenant_id = :tenant_id WHERE id = :id AND tenant_id IS NULL"),
        {"tenant_id": tenant_id, "id": account_id},
    )


def system_account_id(session: Session, *, kind: AccountKind) -> int:
    account_id = session.execute(
        text("SELECT id FROM ledger_accounts WHERE kind = :kind AND NOT balance_tracked"),
        {"kind": kind.value},
    ).scalar_one_or_none()
    if account_id is None:
        raise AccountNotFound(f"system account {kind.value} is missing: run the migrations")
    return int(account_id)


def get_balance(session: Session, *, account_id: int) -> Balance:
    row = session.execute(
        text("SELECT id, balance, held FROM ledger_accounts WHERE id = :id AND balance_tracked"),
        {"id": account_id},
    ).one_or_none()
    if row is None:
        raise AccountNotFound(f"account {account_id} not found")
    return Balance(account_id=row.id, balance=row.balance, held=row.held)


def get_balances(session: Session, *, account_ids: Sequence[int]) -> dict[int, Balance]:
    rows = session.execute(
        text("SELECT id, balance, held FROM ledger_accounts WHERE id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": list(account_ids)},
    )
    return {r.id: Balance(account_id=r.id, balance=r.balance, held=r.held) for r in rows}


# --- postings ----------------------------------------------------------------------------------------

_POST_SQL = text(
    """
WITH txn AS (
    INSERT INTO ledger_transactions
        (kind, idempotency_key, request_hash, amount, tenant_id, actor, reason, reference,
         reverses_transaction_id)
    VALUES (:kind, :key, :hash, :amount, :tenant_id, :actor, :reason, :reference, :reverses)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, created_at
),
legs AS (
    SELECT account_id, amount
    FROM unnest(CAST(:accounts AS bigint[]), CAST(:amounts AS bigint[])) AS l(account_id, amount)
),
-- Lock the tracked accounts in id order so two postings over the same pair cannot deadlock.
locked AS (
    SELECT a.id, a.balance - a.held AS available FROM ledger_accounts a
    WHERE a.id = ANY(CAST(:accounts AS bigint[])) AND a.balance_tracked AND EXISTS (SELECT 1 FROM txn)
    ORDER BY a.id
    FOR UPDATE
),
-- Every leg or none: a balance never moves without its entry (the database checks it), so one leg that would
-- take its account below zero stops them all.
covered AS (
    SELECT coalesce(bool_and(locked.available + legs.amount >= 0), true) AS ok
    FROM locked JOIN legs ON legs.account_id = locked.id
),
moved AS (
    UPDATE ledger_accounts a
    SET balance = a.balance + legs.amount, version = a.version + 1
    FROM legs, locked, covered
    WHERE a.id = legs.account_id AND a.id = locked.id AND covered.ok
    RETURNING a.id, a.balance
),
entries AS (
    INSERT INTO ledger_entries (transaction_id, account_id, amount, balance_after)
    SELECT txn.id, legs.account_id, legs.amount, moved.balance
    FROM txn CROSS JOIN legs LEFT JOIN moved ON moved.id = legs.account_id
    WHERE (SELECT count(*) FROM moved) = (SELECT count(*) FROM locked)
    RETURNING account_id
)
SELECT (SELECT id FROM txn) AS transaction_id,
       (SELECT created_at FROM txn) AS created_at,
       (SELECT count(*) FROM locked) AS n_tracked,
       (SELECT count(*) FROM moved) AS n_moved,
       (SELECT count(*) FROM entries) AS n_entries,
       (SELECT count(*) FROM ledger_accounts WHERE id = ANY(CAST(:accounts AS bigint[]))) AS n_known
"""
)


def post(
    session: Session,
    *,
    kind: TransactionKind,
    legs: Sequence[tuple[int, int]],
    idempotency_key: str,
    request_hash: bytes,
    tenant_id: int | None,
    actor: str | None,
    reason: str | None = None,
    reference: str | None = None,
    reverses_transaction_id: int | None = None,
) -> Posting:
    """Post a balanced transaction of (account_id, amount) legs in one statement.

    A repeated idempotency key with the same request hash replays the first posting; with another hash it is
    refused. A leg that would take a tracked account's available below zero refuses the whole posting."""
    if len(legs) < 2 or sum(amount for _, amount in legs) != 0 or any(a == 0 for _, a in legs):
        raise InvalidAmount("a transaction needs two or more non-zero legs that sum to zero")
    if len({account for account, _ in legs}) != len(legs):
        raise InvalidAmount("each account appears once in a transaction")
    total = sum(amount for _, amount in legs if amount > 0)
    with database_refusals():
        row = session.execute(
            _POST_SQL,
            {
                "kind": kind.value,
                "key": idempotency_key,
                "hash": request_hash,
                "amount": total,
                "tenant_id": tenant_id,
                "actor": actor,
                "reason": reason,
                "reference": reference,
                "reverses": reverses_transaction_id,
                "accounts": [account for account, _ in legs],
                "amounts": [amount for _, amount in legs],
            },
        ).one()
    if row.transaction_id is None:
        return _replay(session, idempotency_key=idempotency_key, request_hash=request_hash)
    if row.n_known != len(legs):
        raise AccountNotFound("an account in this transaction does not exist")
    if row.n_moved != row.n_tracked or row.n_entries != len(legs):
        debited = [account for account, amount in legs if amount < 0]
        balances = get_balances(session, account_ids=debited)
        available = min((b.available for b in balances.values()), default=0)
        raise InsufficientTokens(
            f"not enough tokens: {total} needed, {available} available",
            needed=total,
            available=available,
        )
    return Posting(
        transaction_id=row.transaction_id,
        kind=kind.value,
        amount=total,
        replayed=False,
        created_at=row.created_at,
        tenant_id=tenant_id,
    )


def find_posting(session: Session, *, idempotency_key: str, request_hash: bytes) -> Posting | None:
    """The posting already made under this key (a replay), None if there is none; a different request under the
    same key is refused."""
    stored = session.execute(
        text(
            "SELECT id, kind, amount, request_hash, created_at, tenant_id FROM ledger_transactions "
            "WHERE idempotency_key = :key"
        ),
        {"key": idempotency_key},
    ).one_or_none()
    if stored is None:
        return None
    if bytes(stored.request_hash) != request_hash:
        raise IdempotencyConflict("this idempotency key was already used for a different request")
    return Posting(
        transaction_id=stored.id,
        kind=stored.kind,
        amount=stored.amount,
        replayed=True,
        created_at=stored.created_at,
        tenant_id=stored.tenant_id,
    )


def _replay(session: Session, *, idempotency_key: str, request_hash: bytes) -> Posting:
    posting = find_posting(session, idempotency_key=idempotency_key, request_hash=request_hash)
    assert posting is not None  # called after ON CONFLICT saw the key, so the row exists
    return posting


def transfer(
    session: Session,
    *,
    kind: TransactionKind,
    from_account_id: int,
    to_account_id: int,
    amount: int,
    idempotency_key: str,
    request_hash: bytes,
    tenant_id: int | None,
    actor: str | None,
    reason: str | None = None,
    reference: str | None = None,
) -> Posting:
    if amount <= 0:
        raise InvalidAmount("amount must be a positive integer")
    return post(
        session,
        kind=kind,
        legs=[(from_account_id, -amount), (to_account_id, amount)],
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        tenant_id=tenant_id,
        actor=actor,
        reason=reason,
        reference=reference,
    )


def reverse(
    session: Session,
    *,
    transaction_id: int,
    idempotency_key: str,
    request_hash: bytes,
    actor: str | None,
    reason: str,
    tenant_id: int | None = None,
) -> Posting:
    """Post the exact opposite of a transaction (corrections are new entries, never edits)."""
    # Serialised per transaction: a concurrent reversal of the same one waits here until this one commits, then
    # sees it and is refused. An advisory lock rather than a row lock: the journal is append-only, and the service
    # role holds no UPDATE privilege on it (which SELECT ... FOR UPDATE would need).
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"), {"lock": f"reverse:{transaction_id}"}
    )
    original = session.execute(
        text("SELECT id, kind, tenant_id FROM ledger_transactions WHERE id = :id"),
        {"id": transaction_id},
    ).one_or_none()
    if original is None or (tenant_id is not None and original.tenant_id != tenant_id):
        raise TransactionNotFound(f"transaction {transaction_id} not found")
    if original.kind == TransactionKind.reversal:
        raise NotReversible("a reversal cannot be reversed; post an adjustment instead")
    existing = session.execute(
        text("SELECT idempotency_key FROM ledger_transactions WHERE reverses_transaction_id = :id"),
        {"id": transaction_id},
    ).scalar_one_or_none()
    if existing is not None and existing != idempotency_key:
        raise AlreadyReversed(f"transaction {transaction_id} was already reversed")
    legs = [
        (r.account_id, -r.amount)
        for r in session.execute(
            text(
                "SELECT account_id, CAST(sum(amount) AS bigint) AS amount FROM ledger_entries "
                "WHERE transaction_id = :id GROUP BY account_id HAVING sum(amount) <> 0 ORDER BY account_id"
            ),
            {"id": transaction_id},
        )
    ]
    with database_refusals():
        return post(
            session,
            kind=TransactionKind.reversal,
            legs=legs,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            tenant_id=original.tenant_id,
            actor=actor,
            reason=reason,
            reverses_transaction_id=transaction_id,
        )


# --- holds -------------------------------------------------------------------------------------------

_RESERVE_SQL = text(
    """
WITH hold AS (
    INSERT INTO holds (account_id, tenant_id, amount, reference, metadata, expires_at)
    SELECT id, tenant_id, :amount, :reference, CAST(:metadata AS jsonb),
           now() + make_interval(secs => :ttl_seconds)
    FROM ledger_accounts WHERE id = :account_id AND balance_tracked
    ON CONFLICT (reference) DO NOTHING
    RETURNING id, account_id, amount
),
reserved AS (
    UPDATE ledger_accounts a SET held = a.held + hold.amount
    FROM hold
    WHERE a.id = hold.account_id AND a.balance - a.held >= hold.amount
    RETURNING a.id, a.balance - a.held AS available
)
SELECT hold.id AS hold_id, (SELECT count(*) FROM reserved) AS n_reserved,
       (SELECT available FROM reserved) AS available
FROM hold
"""
)


def reserve(
    session: Session,
    *,
    account_id: int,
    amount: int,
    reference: str,
    ttl_seconds: int,
    metadata: dict[str, Any] | None = None,
) -> HoldResult:
    """Hold `amount` tokens on an account until captured, released or expired. `reference` makes it
    idempotent: the same reference returns the first hold."""
    if amount <= 0:
        raise InvalidAmount("a hold must be a positive integer")
    with database_refusals():
        row = session.execute(
            _RESERVE_SQL,
            {
                "account_id": account_id,
                "amount": amount,
                "reference": reference,
                "ttl_seconds": ttl_seconds,
                "metadata": json.dumps(metadata) if metadata is not None else None,
            },
        ).one_or_none()
    if row is None:
        existing = _hold_by_reference(session, reference=reference)
        if existing is None:
            raise AccountNotFound(f"account {account_id} not found")
        if existing.account_id != account_id or existing.amount != amount:
            raise IdempotencyConflict("this hold reference was already used for a different hold")
        return existing
    if row.n_reserved != 1:
        balance = get_balance(session, account_id=account_id)
        raise InsufficientTokens(
            f"not enough tokens: {amount} needed, {balance.available} available",
            needed=amount,
            available=balance.available,
        )
    return HoldResult(
        hold_id=row.hold_id,
        account_id=account_id,
        amount=amount,
        status="held",
        captured_amount=None,
        replayed=False,
        available_after=row.available,
    )


_CAPTURE_SQL = text(
    """
WITH hold AS (
    UPDATE holds
    SET status = 'captured', captured_amount = coalesce(CAST(:amount AS bigint), amount), resolved_at = now()
    WHERE id = :hold_id AND status = 'held' AND amount >= coalesce(CAST(:amount AS bigint), amount)
    RETURNING id, account_id, tenant_id, amount, captured_amount, reference
),
txn AS (
    INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, amount, tenant_id, hold_id, reference)
    SELECT 'capture', 'hold-capture:' || hold.id, :hash, hold.captured_amount, hold.tenant_id, hold.id,
           hold.reference
    FROM hold
    RETURNING id
),
debited AS (
    UPDATE ledger_accounts a
    SET balance = a.balance - hold.captured_amount, held = a.held - hold.amount, version = a.version + 1
    FROM hold WHERE a.id = hold.account_id
    RETURNING a.id, a.balance
),
entries AS (
    INSERT INTO ledger_entries (transaction_id, account_id, amount, balance_after)
    SELECT txn.id, debited.id, -hold.captured_amount, debited.balance FROM txn, debited, hold
    UNION ALL
    SELECT txn.id, a.id, hold.captured_amount, NULL FROM txn, hold, ledger_accounts a
    WHERE a.kind = 'usage_revenue' AND NOT a.balance_tracked
    RETURNING id
)
SELECT txn.id AS transaction_id, hold.account_id, hold.amount, hold.captured_amount,
       (SELECT count(*) FROM entries) AS n_entries
FROM txn, hold
"""
)


def capture(session: Session, *, hold_id: int, amount: int | None = None) -> HoldResult:
    """Capture a hold once, for at most its amount (the rest is released with it; default: all of it).
    Capturing again with the same amount replays; a hold already released, expired or captured for another
    amount is refused, so a capture racing a release resolves exactly one of them."""
    if amount is not None and amount <= 0:
        raise InvalidAmount("a capture must be a positive integer")
    with database_refusals():
        row = session.execute(
            _CAPTURE_SQL,
            {"hold_id": hold_id, "amount": amount, "hash": request_hash({"capture": amount})},
        ).one_or_none()
    if row is None:
        current = _hold_by_id(session, hold_id=hold_id)
        if current.status == "held":
            raise InvalidAmount(f"a capture must be between 1 and the held {current.amount} tokens")
        if current.status == "captured" and amount in (None, current.captured_amount):
            return HoldResult(**{**_as_dict(current), "replayed": True})
        raise HoldAlreadyResolved(f"hold {hold_id} is already {current.status}", status=current.status)
    if row.n_entries != 2:
        raise AccountNotFound("usage revenue account is missing: run the migrations")
    return HoldResult(
        hold_id=hold_id,
        account_id=row.account_id,
        amount=row.amount,
        status="captured",
        captured_amount=row.captured_amount,
        replayed=False,
    )


_RELEASE_SQL = text(
    """
WITH hold AS (
    UPDATE holds SET status = :status, resolved_at = now()
    WHERE id = ANY(CAST(:hold_ids AS bigint[])) AND status = 'held'
    RETURNING id, account_id, amount, status
),
per_account AS (
    SELECT account_id, sum(amount) AS amount FROM hold GROUP BY account_id
),
released AS (
    UPDATE ledger_accounts a SET held = a.held - per_account.amount
    FROM per_account WHERE a.id = per_account.account_id
    RETURNING a.id
)
SELECT hold.id, hold.account_id, hold.amount, hold.status, NULL AS captured_amount FROM hold
"""
)


def release(session: Session, *, hold_id: int) -> HoldResult:
    """Release a hold once. Releasing an already released hold replays; a captured one is refused."""
    with database_refusals():
        row = session.execute(_RELEASE_SQL, {"hold_ids": [hold_id], "status": "released"}).one_or_none()
    if row is not None:
        return _hold_row(row)
    current = _hold_by_id(session, hold_id=hold_id)
    if current.status == "released":
        return HoldResult(**{**_as_dict(current), "replayed": True})
    raise HoldAlreadyResolved(f"hold {hold_id} is already {current.status}", status=current.status)


def release_holds(session: Session, *, hold_ids: Sequence[int]) -> list[int]:
    """Release every hold of `hold_ids` that is still held, in one statement; returns the ones this call
    released (the others were already resolved by someone else, and stay as they are)."""
    if not hold_ids:
        return []
    with database_refusals():
        return list(session.execute(_RELEASE_SQL, {"hold_ids": list(hold_ids), "status": "released"}).scalars().all())


def expire_due_holds(session: Session, *, limit: int = 500) -> list[int]:
    """Release holds past their deadline. SKIP LOCKED: a hold being captured right now is not waited on,
    and several sweepers can run at once; whoever loses the `status = 'held'` guard changes nothing."""
    due = (
        session.execute(
            text(
                "SELECT id FROM holds WHERE status = 'held' AND expires_at <= now() "
                "ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED"
            ),
            {"limit": limit},
        )
        .scalars()
        .all()
    )
    if not due:
        return []
    with database_refusals():
        return list(session.execute(_RELEASE_SQL, {"hold_ids": list(due), "status": "expired"}).scalars().all())


def get_hold(session: Session, *, hold_id: int) -> HoldResult:
    return _hold_by_id(session, hold_id=hold_id)


def _hold_by_id(session: Session, *, hold_id: int) -> HoldResult:
    row = session.execute(
        text("SELECT id, account_id, amount, status, captured_amount FROM holds WHERE id = :id"),
        {"id": hold_id},
    ).one_or_none()
    if row is None:
        raise HoldNotFound(f"hold {hold_id} not found")
    return _hold_row(row)


def _hold_by_reference(session: Session, *, reference: str) -> HoldResult | None:
    row = session.execute(
        text("SELECT id, account_id, amount, status, captured_amount FROM holds WHERE reference = :ref"),
        {"ref": reference},
    ).one_or_none()
    if row is None:
        return None
    return HoldResult(**{**_as_dict(_hold_row(row)), "replayed": True})


def _hold_row(row: Any) -> HoldResult:
    return HoldResult(
        hold_id=row.id,
        account_id=row.account_id,
        amount=row.amount,
        status=row.status,
        captured_amount=row.captured_amount,
        replayed=False,
    )


def _as_dict(hold: HoldResult) -> dict[str, Any]:
    return {
        "hold_id": hold.hold_id,
        "account_id": hold.account_id,
        "amount": hold.amount,
        "status": hold.status,
        "captured_amount": hold.captured_amount,
    }


# --- reading the journal ----------------------------------------------------------------------------


def list_entries(session: Session, *, account_id: int, before_id: int | None, limit: int) -> list[dict[str, Any]]:
    rows = session.execute(
        text(
            """
            SELECT e.id, e.transaction_id, e.amount, e.balance_after, e.reference, e.created_at,
                   t.kind, t.reason, t.reference AS transaction_reference
            FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
            WHERE e.account_id = :account_id AND (CAST(:before_id AS bigint) IS NULL OR e.id < :before_id)
            ORDER BY e.id DESC
            LIMIT :limit
            """
        ),
        {"account_id": account_id, "before_id": before_id, "limit": limit},
    )
    return [dict(r._mapping) for r in rows]
