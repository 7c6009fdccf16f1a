"""Ledger operations. Each money movement is one SQL statement (one round trip): the idempotency row, the
guarded balance updates and the entries go together, so nothing is read, decided in Python and written back.

Services never commit: the caller's request or job boundary does. A raised error means the boundary must
roll back (a statement may already have inserted a header row that only the rollback removes).

Accounts, postings and reading the journal are here; holds (reserve, capture, release, expiry) are
`billing.ledger.holds`; which lots a posting burns and writes, and the lots' expiry, `billing.ledger.lots`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from billing.errors import (
    AccountNotFound,
    AlreadyReversed,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
    InvalidLotTerms,
    LedgerContention,
    LedgerInconsistent,
    NotReversible,
    TransactionNotFound,
)
from billing.ledger import lots
from billing.ledger.orm import MAX_PRIORITY, MIN_PRIORITY, PAID_PRIORITY, AccountKind, LotSource, TransactionKind
from billing.ledger.schemas import Balance, LotTerms, Posting

# Postgres SQLSTATEs that mean "the database refused, nothing was applied".
_CONTENTION_STATES = {"40P01", "40001", "55P03"}  # deadlock, serialization failure, lock not available
_CHECK_VIOLATION = "23514"
# The rules an account's lots break when they no longer add up to its balance (a bug, never a caller's doing).
_LOT_RULES = ("credit_lots_cover_the_balance", "ck_credit_lots_within_amount")
# How far a caller's clock may run ahead of the database's when it names a lot's effective time.
_CLOCK_SKEW = timedelta(seconds=5)


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
        if state == _CHECK_VIOLATION and any(rule in str(exc.orig) for rule in _LOT_RULES):
            raise LedgerInconsistent(f"credit lots disagree with the balance: {exc.orig}".strip()) from exc
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
-- Lock the tracked accounts in id order so two postings over the same pair cannot deadlock. NO KEY UPDATE, the
-- lock the balance update takes anyway: FOR UPDATE would also wait for every transaction holding a foreign-key
-- share lock on the account (a batch that staged rows naming it), chaining a single recharge behind a batch.
locked AS (
    SELECT a.id, a.balance - a.held AS available FROM ledger_accounts a
    WHERE a.id = ANY(CAST(:accounts AS bigint[])) AND a.balance_tracked AND EXISTS (SELECT 1 FROM txn)
    ORDER BY a.id
    FOR NO KEY UPDATE
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
    lot_terms: LotTerms | None = None,
) -> Posting:
    """Post a balanced transaction of (account_id, amount) legs in one statement, then its lots in a second (under
    the accounts' row locks the first took): each tracked debit burns lots in the burn order, each tracked credit
    lands in lots written with `lot_terms` (`billing.ledger.lots.record_posting` says which).

    A repeated idempotency key with the same request hash replays the first posting; with another hash it is
    refused. A leg that would take a tracked account's available below zero refuses the whole posting."""
    check_lot_terms(lot_terms)
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
    if row.n_tracked:
        with database_refusals():
            lots.record_posting(
                session,
                transaction_id=row.transaction_id,
                kind=kind,
                legs=legs,
                terms=lot_terms,
                reverses_transaction_id=reverses_transaction_id,
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
    lot_terms: LotTerms | None = None,
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
        lot_terms=lot_terms,
    )


def credit(
    session: Session,
    *,
    account_id: int,
    amount: int,
    source: LotSource,
    priority: int = PAID_PRIORITY,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    idempotency_key: str,
    request_hash: bytes,
    tenant_id: int | None,
    actor: str | None,
    reason: str | None = None,
    reference: str | None = None,
    kind: TransactionKind = TransactionKind.recharge,
    from_kind: AccountKind = AccountKind.issuance,
) -> Posting:
    """Credit a user or pool account with one lot, from a system account (issuance by default): the entry point for
    whatever grants tokens on a schedule. `effective_at` may be earlier than now (a grant for a period that began
    before it was written), never later: a lot is written when it takes effect, and is spendable at once. The
    idempotency key makes it once-only (a scheduler's rerun replays)."""
    return transfer(
        session,
        kind=kind,
        from_account_id=system_account_id(session, kind=from_kind),
        to_account_id=account_id,
        amount=amount,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        tenant_id=tenant_id,
        actor=actor,
        reason=reason,
        reference=reference,
        lot_terms=LotTerms(priority=priority, expires_at=expires_at, effective_at=effective_at, source=source.value),
    )


def check_lot_terms(terms: LotTerms | None) -> None:
    """Refuse terms no lot may have: a priority out of range, an expiry not after the lot takes effect, or a lot
    that takes effect in the future (a lot is written when it takes effect)."""
    if terms is None:
        return
    if terms.priority is not None and not MIN_PRIORITY <= terms.priority <= MAX_PRIORITY:
        raise InvalidLotTerms(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    now = datetime.now(UTC)
    for name, value in (("expires_at", terms.expires_at), ("effective_at", terms.effective_at)):
        if value is not None and value.tzinfo is None:
            raise InvalidLotTerms(f"{name} needs a time zone")
    if terms.effective_at is not None and terms.effective_at > now + _CLOCK_SKEW:
        raise InvalidLotTerms("effective_at is in the future: write the lot when it takes effect")
    if terms.expires_at is not None and terms.expires_at <= (terms.effective_at or now):
        raise InvalidLotTerms("expires_at must be after the lot takes effect")
    if terms.source is not None and terms.source not in set(LotSource) - {LotSource.migration}:
        raise InvalidLotTerms(f"unknown lot source {terms.source}")


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
    if original.kind == TransactionKind.expiry:
        # Its lots would come back with the expiry they reached, and expire again at the next sweep.
        raise NotReversible("an expiry cannot be reversed; post an adjustment instead")
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
