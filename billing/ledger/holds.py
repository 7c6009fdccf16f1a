"""Holds: tokens reserved for work not yet done (a swap job), then captured once or released once. Each
outcome is one SQL statement guarded by `status = 'held'`, so a capture racing a release resolves exactly one of
them, and the database's `holds_one_way` trigger keeps a resolved hold from ever changing again.

A hold takes its tokens from the account's credit lots at reserve, in the burn order (`hold_lot_allocations`); its
capture burns those allocations in the same order (the captured tokens, recorded in `lot_consumptions`) and gives
the rest back; a release or expiry gives them all back. A lot that expires meanwhile keeps what a hold took from it.

Services never commit: the caller's request or job boundary does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.errors import (
    AccountNotFound,
    HoldAlreadyResolved,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
)
from billing.ledger.schemas import HoldResult
from billing.ledger.service import database_refusals, get_balance, request_hash

# Reserve and capture are database functions (migrations 0009 and 0010): prepared once per connection with cached plans,
# called through the driver with positional arguments, which skips the ORM's statement handling on the hot path.
_RESERVE_CALL = "SELECT hold_id, reserved, available FROM facemint_hold_reserve(%s, %s, %s, %s, %s, %s)"


def reserve(
    session: Session,
    *,
    account_id: int,
    amount: int,
    reference: str,
    ttl_seconds: int,
    metadata: dict[str, Any] | None = None,
    synchronous_commit: bool = True,
) -> HoldResult:
    """Hold `amount` tokens on an account until captured, released or expired. `reference` makes it
    idempotent: the same reference returns the first hold. `synchronous_commit=False` makes the caller's
    transaction commit without waiting for its WAL flush (see migration 0009: the hot-account policy)."""
    if amount <= 0:
        raise InvalidAmount("a hold must be a positive integer")
    with database_refusals():
        row = (
            session.connection()
            .exec_driver_sql(
                _RESERVE_CALL,
                (
                    account_id,
                    amount,
                    reference,
                    json.dumps(metadata) if metadata is not None else None,
                    ttl_seconds,
                    synchronous_commit,
                ),
            )
            .one_or_none()
        )
    if row is None:
        existing = _hold_by_reference(session, reference=reference)
        if existing is None:
            raise AccountNotFound(f"account {account_id} not found")
        if existing.account_id != account_id or existing.amount != amount:
            raise IdempotencyConflict("this hold reference was already used for a different hold")
        return existing
    if not row.reserved:
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


_CAPTURE_CALL = (
    "SELECT transaction_id, account_id, amount, captured_amount, entries FROM facemint_hold_capture(%s, %s, %s, %s)"
)
# A capture's idempotency hash depends only on the amount; the whole-hold capture is by far the most common.
_WHOLE_CAPTURE_HASH = request_hash({"capture": None})


def capture(
    session: Session, *, hold_id: int, amount: int | None = None, synchronous_commit: bool = True
) -> HoldResult:
    """Capture a hold once, for at most its amount (the rest is released with it; default: all of it).
    Capturing again with the same amount replays; a hold already released, expired or captured for another
    amount is refused, so a capture racing a release resolves exactly one of them."""
    if amount is not None and amount <= 0:
        raise InvalidAmount("a capture must be a positive integer")
    with database_refusals():
        row = (
            session.connection()
            .exec_driver_sql(
                _CAPTURE_CALL,
                (
                    hold_id,
                    amount,
                    _WHOLE_CAPTURE_HASH if amount is None else request_hash({"capture": amount}),
                    synchronous_commit,
                ),
            )
            .one_or_none()
        )
    if row is None:
        current = _hold_by_id(session, hold_id=hold_id)
        if current.status == "held":
            raise InvalidAmount(f"a capture must be between 1 and the held {current.amount} tokens")
        if current.status == "captured" and amount in (None, current.captured_amount):
            return HoldResult(**{**_as_dict(current), "replayed": True})
        raise HoldAlreadyResolved(f"hold {hold_id} is already {current.status}", status=current.status)
    if row.entries != 2:
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
),
-- The holds' lots give back what the holds took from them, once the accounts are locked (released): every writer of
-- an account's lots holds its row lock.
per_lot AS (
    SELECT al.lot_id, sum(al.amount) AS amount
    FROM hold_lot_allocations al JOIN hold ON hold.id = al.hold_id
    WHERE EXISTS (SELECT 1 FROM released)
    GROUP BY al.lot_id
),
freed AS (
    UPDATE credit_lots l SET held = l.held - per_lot.amount FROM per_lot WHERE l.id = per_lot.lot_id
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
