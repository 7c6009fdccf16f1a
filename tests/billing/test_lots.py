"""Credit lots against real Postgres: the burn order over mixed lots, holds that reserve from lots and captures that
burn them, postings that burn and mirror lots, expiry by the sweep (and racing a capture), and the migration that
turns existing balances into lots."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.orm import Session, sessionmaker

from billing.errors import InsufficientTokens, InvalidLotTerms, NotReversible
from billing.ledger import holds as ledger_holds
from billing.ledger import lots
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, LotSource, TransactionKind
from billing.ledger.schemas import LotTerms
from billing.recharge import service as batches
from billing.reports.reconcile import reconcile
from facemint import migrate
from facemint.db import sqlalchemy_url
from tests.conftest import with_database
from tests.factories import create_tenant, create_user

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def _key() -> str:
    return uuid.uuid4().hex


def _credit(
    session: Session, account: int, amount: int, *, priority: int = 50, expires_at: datetime | None = None
) -> int:
    posting = ledger.credit(
        session,
        account_id=account,
        amount=amount,
        source=LotSource.grant,
        priority=priority,
        expires_at=expires_at,
        idempotency_key=_key(),
        request_hash=b"test",
        tenant_id=None,
        actor="test",
    )
    session.commit()
    return posting.transaction_id


def _lot_of(session: Session, transaction_id: int) -> int:
    (lot,) = lots.lots_of_transaction(session, transaction_id=transaction_id)
    return lot.lot_id


def _remaining(session: Session, account: int) -> dict[int, tuple[int, int]]:
    """lot id -> (remaining, held), every lot of the account, spent ones too."""
    rows = session.execute(
        text("SELECT id, remaining, held FROM credit_lots WHERE account_id = :a ORDER BY id"), {"a": account}
    )
    return {r.id: (r.remaining, r.held) for r in rows}


def _reserve(session: Session, account: int, amount: int) -> int:
    hold = ledger_holds.reserve(session, account_id=account, amount=amount, reference=_key(), ttl_seconds=600)
    session.commit()
    return hold.hold_id


def _make_due(owner_engine: Engine, *lot_ids: int) -> None:
    """Time passes: the lots' expiry is now behind them (the clock is not the test's to move)."""
    with owner_engine.begin() as conn:
        conn.execute(
            text("UPDATE credit_lots SET expires_at = now() - interval '1 second' WHERE id = ANY(:ids)"),
            {"ids": list(lot_ids)},
        )


@pytest.fixture
def account(session: Session) -> int:
    return create_user(session).account_id


@pytest.fixture
def mixed(session: Session, account: int) -> dict[str, int]:
    """Five lots, credited in an order unlike the burn order: name -> lot id."""
    spec = {
        "paid": (50, None),
        "promo_month": (10, NOW + 30 * DAY),
        "paid_tomorrow": (50, NOW + DAY),
        "paid_in_two_days": (50, NOW + 2 * DAY),
        "promo_forever": (10, None),
    }
    return {
        name: _lot_of(session, _credit(session, account, 10, priority=priority, expires_at=expires))
        for name, (priority, expires) in spec.items()
    }


BURN_ORDER = ("promo_month", "promo_forever", "paid_tomorrow", "paid_in_two_days", "paid")


class TestBurnOrder:
    def test_lots_list_in_burn_order_priority_then_soonest_expiry_then_oldest(
        self, session: Session, account: int, mixed: dict[str, int]
    ) -> None:
        listed = lots.account_lots(session, account_ids=[account])[account]
        assert [lot.lot_id for lot in listed] == [mixed[name] for name in BURN_ORDER]
        assert lots.next_expiries(session, account_ids=[account])[account].amount == 10

    def test_a_reserve_takes_lots_in_burn_order_and_its_capture_burns_them(
        self, session: Session, account: int, mixed: dict[str, int]
    ) -> None:
        hold = _reserve(session, account, 25)
        assert lots.hold_allocations(session, hold_id=hold) == {
            mixed["promo_month"]: 10,
            mixed["promo_forever"]: 10,
            mixed["paid_tomorrow"]: 5,
        }
        # A second hold starts where the first stopped: what a lot holds is not taken twice.
        second = _reserve(session, account, 10)
        assert lots.hold_allocations(session, hold_id=second) == {
            mixed["paid_tomorrow"]: 5,
            mixed["paid_in_two_days"]: 5,
        }
        # A partial capture burns the allocations in burn order and gives the rest back.
        result = ledger_holds.capture(session, hold_id=hold, amount=15)
        session.commit()
        capture_txn = session.execute(
            text("SELECT id FROM ledger_transactions WHERE hold_id = :h"), {"h": hold}
        ).scalar_one()
        assert result.captured_amount == 15
        assert lots.consumptions(session, transaction_id=capture_txn) == {
            mixed["promo_month"]: 10,
            mixed["promo_forever"]: 5,
        }
        state = _remaining(session, account)
        assert state[mixed["promo_month"]] == (0, 0)
        assert state[mixed["promo_forever"]] == (5, 0)
        assert state[mixed["paid_tomorrow"]] == (10, 5)  # the second hold's part
        # The release gives the second hold's tokens back.
        ledger_holds.release(session, hold_id=second)
        session.commit()
        assert all(held == 0 for _, held in _remaining(session, account).values())

    def test_a_posted_debit_burns_in_burn_order_around_what_holds_took(
        self, session: Session, account: int, mixed: dict[str, int]
    ) -> None:
        _reserve(session, account, 12)  # promo_month 10, promo_forever 2
        posting = ledger.post(
            session,
            kind=TransactionKind.adjustment,
            legs=[(account, -20), (ledger.system_account_id(session, kind=AccountKind.adjustments), 20)],
            idempotency_key=_key(),
            request_hash=b"test",
            tenant_id=None,
            actor="test",
        )
        session.commit()
        assert lots.consumptions(session, transaction_id=posting.transaction_id) == {
            mixed["promo_forever"]: 8,
            mixed["paid_tomorrow"]: 10,
            mixed["paid_in_two_days"]: 2,
        }

    def test_a_hold_spanning_every_lot_and_one_token_more_is_refused(
        self, session: Session, account: int, mixed: dict[str, int]
    ) -> None:
        with pytest.raises(InsufficientTokens):
            ledger_holds.reserve(session, account_id=account, amount=51, reference=_key(), ttl_seconds=60)
        session.rollback()
        hold = _reserve(session, account, 50)
        assert sum(lots.hold_allocations(session, hold_id=hold).values()) == 50
        ledger_holds.capture(session, hold_id=hold)
        session.commit()
        assert ledger.get_balance(session, account_id=account).balance == 0
        assert lots.account_lots(session, account_ids=[account]) == {}


class TestPostings:
    def test_a_pool_hands_its_lots_on_with_their_expiry_and_priority(self, session: Session) -> None:
        tenant = create_tenant(session)
        pool = tenant.pool_account_id
        user = create_user(session, tenant=tenant).account_id
        soon = _credit(session, pool, 30, priority=20, expires_at=NOW + DAY)
        later = _credit(session, pool, 30, priority=50, expires_at=NOW + 10 * DAY)
        posting = ledger.transfer(
            session,
            kind=TransactionKind.recharge,
            from_account_id=pool,
            to_account_id=user,
            amount=40,
            idempotency_key=_key(),
            request_hash=b"test",
            tenant_id=tenant.id,
            actor="test",
        )
        session.commit()
        received = {
            (lot.source, lot.priority, lot.expires_at, lot.amount)
            for lot in lots.lots_of_transaction(session, transaction_id=posting.transaction_id)
        }
        assert received == {
            ("transfer", 20, _expiry(session, soon), 30),
            ("transfer", 50, _expiry(session, later), 10),
        }

    def test_a_transfer_asking_a_later_expiry_keeps_the_pools_sooner_one(self, session: Session) -> None:
        tenant = create_tenant(session)
        pool, user = tenant.pool_account_id, create_user(session, tenant=tenant).account_id
        soon = _credit(session, pool, 10, expires_at=NOW + DAY)
        _credit(session, pool, 10)
        posting = ledger.transfer(
            session,
            kind=TransactionKind.recharge,
            from_account_id=pool,
            to_account_id=user,
            amount=20,
            idempotency_key=_key(),
            request_hash=b"test",
            tenant_id=tenant.id,
            actor="test",
            lot_terms=LotTerms(priority=5, expires_at=NOW + 5 * DAY),
        )
        session.commit()
        received = sorted(
            (lot.priority, lot.expires_at)
            for lot in lots.lots_of_transaction(session, transaction_id=posting.transaction_id)
        )
        assert received == sorted([(5, _expiry(session, soon)), (5, NOW + 5 * DAY)])

    def test_reversing_a_recharge_burns_its_own_lot_first(self, session: Session, account: int) -> None:
        first = _credit(session, account, 10, priority=0)  # would burn first in the burn order
        second = _credit(session, account, 10, priority=90)
        reversal = ledger.reverse(
            session, transaction_id=second, idempotency_key=_key(), request_hash=b"r", actor="test", reason="wrong"
        )
        session.commit()
        assert lots.consumptions(session, transaction_id=reversal.transaction_id) == {_lot_of(session, second): 10}
        assert _remaining(session, account)[_lot_of(session, first)] == (10, 0)

    def test_reversing_a_capture_gives_back_the_lots_it_burned_as_they_were(
        self, session: Session, account: int
    ) -> None:
        expiring = _credit(session, account, 10, priority=10, expires_at=NOW + 3 * DAY)
        _credit(session, account, 10)
        hold = _reserve(session, account, 15)
        ledger_holds.capture(session, hold_id=hold)
        session.commit()
        capture = session.execute(
            text("SELECT id FROM ledger_transactions WHERE hold_id = :h"), {"h": hold}
        ).scalar_one()
        reversal = ledger.reverse(
            session, transaction_id=capture, idempotency_key=_key(), request_hash=b"r", actor="test", reason="refund"
        )
        session.commit()
        restored = {
            (lot.source, lot.priority, lot.expires_at, lot.amount)
            for lot in lots.lots_of_transaction(session, transaction_id=reversal.transaction_id)
        }
        assert restored == {("reversal", 10, _expiry(session, expiring), 10), ("reversal", 50, None, 5)}

    def test_lot_terms_out_of_range_are_refused(self, session: Session, account: int) -> None:
        for terms in (
            LotTerms(priority=101),
            LotTerms(priority=-1),
            LotTerms(expires_at=NOW - DAY),
            LotTerms(effective_at=NOW + DAY),
            LotTerms(expires_at=datetime(2099, 1, 1)),  # no time zone
        ):
            with pytest.raises(InvalidLotTerms):
                ledger.credit(
                    session,
                    account_id=account,
                    amount=1,
                    source=LotSource.grant,
                    priority=terms.priority if terms.priority is not None else 50,
                    expires_at=terms.expires_at,
                    effective_at=terms.effective_at,
                    idempotency_key=_key(),
                    request_hash=b"t",
                    tenant_id=None,
                    actor="test",
                )
            session.rollback()

    def test_a_grant_may_take_effect_before_it_is_written(self, session: Session, account: int) -> None:
        period_start = NOW - timedelta(hours=3)
        posting = ledger.credit(
            session,
            account_id=account,
            amount=7,
            source=LotSource.grant,
            priority=10,
            effective_at=period_start,
            expires_at=period_start + 30 * DAY,
            idempotency_key="grant:plan:2026-12",
            request_hash=b"grant",
            tenant_id=None,
            actor="scheduler",
        )
        session.commit()
        (lot,) = lots.lots_of_transaction(session, transaction_id=posting.transaction_id)
        assert (lot.source, lot.priority, lot.effective_at, lot.amount) == ("grant", 10, period_start, 7)
        again = ledger.credit(
            session,
            account_id=account,
            amount=7,
            source=LotSource.grant,
            priority=10,
            effective_at=period_start,
            expires_at=period_start + 30 * DAY,
            idempotency_key="grant:plan:2026-12",
            request_hash=b"grant",
            tenant_id=None,
            actor="scheduler",
        )
        assert again.replayed
        assert ledger.get_balance(session, account_id=account).balance == 7


def _expiry(session: Session, transaction_id: int) -> datetime | None:
    (lot,) = lots.lots_of_transaction(session, transaction_id=transaction_id)
    return lot.expires_at


class TestExpiry:
    def test_the_sweep_expires_what_no_hold_holds_and_the_rest_after_its_release(
        self, session: Session, account: int, owner_engine: Engine
    ) -> None:
        expiring = _lot_of(session, _credit(session, account, 10, priority=10, expires_at=NOW + DAY))
        kept = _lot_of(session, _credit(session, account, 5))
        hold = _reserve(session, account, 4)  # from the expiring lot
        _make_due(owner_engine, expiring)
        (expiry,) = lots.expire_due_lots(session)
        session.commit()
        assert (expiry.account_id, expiry.amount) == (account, 6)
        balance = ledger.get_balance(session, account_id=account)
        assert (balance.balance, balance.held) == (9, 4)
        assert _remaining(session, account) == {expiring: (4, 4), kept: (5, 0)}
        entries = session.execute(
            text(
                "SELECT a.kind, e.amount FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id "
                "WHERE e.transaction_id = :t ORDER BY e.amount"
            ),
            {"t": expiry.transaction_id},
        ).all()
        assert [tuple(r) for r in entries] == [("user", -6), ("expired", 6)]
        assert lots.expire_due_lots(session) == []  # nothing more to expire while the hold holds the rest
        ledger_holds.release(session, hold_id=hold)
        session.commit()
        (after_release,) = lots.expire_due_lots(session)
        session.commit()
        assert after_release.amount == 4
        assert ledger.get_balance(session, account_id=account).balance == 5
        with pytest.raises(NotReversible):
            ledger.reverse(
                session,
                transaction_id=after_release.transaction_id,
                idempotency_key=_key(),
                request_hash=b"r",
                actor="test",
                reason="undo",
            )
        session.rollback()
        assert reconcile(session).totals["expired"] == 10

    def test_a_capture_burns_held_tokens_of_a_lot_past_its_expiry(
        self, session: Session, account: int, owner_engine: Engine
    ) -> None:
        expiring = _lot_of(session, _credit(session, account, 10, expires_at=NOW + DAY))
        hold = _reserve(session, account, 10)
        _make_due(owner_engine, expiring)
        assert lots.expire_due_lots(session) == []
        ledger_holds.capture(session, hold_id=hold, amount=7)
        session.commit()
        # The 3 tokens the capture gave back are expired by the next sweep.
        (expiry,) = lots.expire_due_lots(session)
        session.commit()
        assert expiry.amount == 3
        assert ledger.get_balance(session, account_id=account).balance == 0

    def test_expiry_racing_captures_never_takes_a_held_token(
        self, session: Session, session_factory: sessionmaker[Session], owner_engine: Engine
    ) -> None:
        """Many accounts, each with a due lot partly held by a hold: captures and sweeps in threads at once. Every
        capture succeeds for its whole hold, every free token expires once, and the books reconcile."""
        accounts = [create_user(session).account_id for _ in range(12)]
        lot_ids, held_ids = [], []
        for account in accounts:
            lot_ids.append(_lot_of(session, _credit(session, account, 20, expires_at=NOW + DAY)))
            held_ids.append(_reserve(session, account, 8))
        _make_due(owner_engine, *lot_ids)
        errors: list[BaseException] = []
        expired: list[int] = []
        barrier = threading.Barrier(3)

        def capture_all() -> None:
            barrier.wait()
            for hold in held_ids:
                with session_factory() as s:
                    try:
                        ledger_holds.capture(s, hold_id=hold)
                        s.commit()
                    except BaseException as exc:  # noqa: BLE001  (reported below)
                        errors.append(exc)

        def sweep() -> None:
            barrier.wait()
            for _ in range(30):
                with session_factory() as s:
                    try:
                        expired.extend(e.amount for e in lots.expire_due_lots(s, limit=3))
                        s.commit()
                    except BaseException as exc:  # noqa: BLE001
                        errors.append(exc)

        threads = [threading.Thread(target=capture_all), threading.Thread(target=sweep), threading.Thread(target=sweep)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        expired.extend(e.amount for e in lots.expire_due_lots(session))
        session.commit()
        assert sum(expired) == 12 * 12
        for account in accounts:
            balance = ledger.get_balance(session, account_id=account)
            assert (balance.balance, balance.held) == (0, 0)
        assert reconcile(session).balanced


class TestMigration:
    def test_existing_balances_and_open_holds_become_lots(self, owner_url: str, fresh_database: str) -> None:
        url = with_database(owner_url, fresh_database)
        migrate.upgrade(url, "0009")
        engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
        try:
            with Session(engine) as s:
                account = ledger.open_account(s, kind=AccountKind.user, tenant_id=None)
                issuance = ledger.system_account_id(s, kind=AccountKind.issuance)
                # Posted as 0009's code did: the journal statement alone (no lots existed).
                s.execute(
                    ledger._POST_SQL,
                    {
                        "kind": "recharge",
                        "key": "before-lots",
                        "hash": b"x",
                        "amount": 30,
                        "tenant_id": None,
                        "actor": "test",
                        "reason": None,
                        "reference": None,
                        "reverses": None,
                        "accounts": [issuance, account],
                        "amounts": [-30, 30],
                    },
                )
                hold = ledger_holds.reserve(s, account_id=account, amount=12, reference="open", ttl_seconds=600)
                s.commit()
            migrate.upgrade(url)
            with Session(engine) as s:
                (lot,) = lots.account_lots(s, account_ids=[account])[account]
                assert (lot.source, lot.priority, lot.expires_at, lot.remaining, lot.held) == (
                    "migration",
                    50,
                    None,
                    30,
                    12,
                )
                assert lots.hold_allocations(s, hold_id=hold.hold_id) == {lot.lot_id: 12}
                epoch = s.execute(text("SELECT first_transaction_id FROM credit_lot_epoch")).scalar_one()
                assert epoch == 2
                assert reconcile(s).balanced
                ledger_holds.capture(s, hold_id=hold.hold_id, amount=10)
                s.commit()
                assert lots.account_lots(s, account_ids=[account])[account][0].remaining == 20
                assert reconcile(s).balanced
        finally:
            engine.dispose()


class TestReconciliation:
    def test_lots_that_disagree_with_the_journal_are_reported(
        self, session: Session, account: int, owner_engine: Engine
    ) -> None:
        lot = _lot_of(session, _credit(session, account, 10))
        with owner_engine.begin() as conn:
            conn.execute(text("UPDATE credit_lots SET remaining = 9 WHERE id = :id"), {"id": lot})
        report = reconcile(session)
        found = {d.check: d.ids for d in report.discrepancies}
        assert found == {"lot_balance_mismatch": [account], "lot_burned_mismatch": [lot]}
        with owner_engine.begin() as conn:
            conn.execute(text("UPDATE credit_lots SET remaining = 10 WHERE id = :id"), {"id": lot})
        assert reconcile(session).balanced


def _apply_batch(
    session: Session, *, source: int, tracked: bool, rows: list[tuple[int, int, int | None, datetime | None]]
) -> int:
    """Stage (account, amount, priority, expires_at) rows and apply them as billing.recharge does; the transaction."""
    batches.create_stage(session)
    for row_no, (account, amount, priority, expires_at) in enumerate(rows, start=1):
        session.execute(
            text(
                f"INSERT INTO {batches.STAGE_TABLE} (row_no, account_id, amount, priority, expires_at) "
                "VALUES (:n, :a, :amount, :p, :e)"
            ),
            {"n": row_no, "a": account, "amount": amount, "p": priority, "e": expires_at},
        )
    terms = {"tenant_id": None, "actor": "test", "reason": "test", "source_account_id": source}
    batch_id = batches.begin_batch(
        session, idempotency_key=_key(), request_hash=b"b", mode="atomic", row_count=len(rows), **terms
    )
    assert isinstance(batch_id, int)
    applied = batches.apply_staged(session, batch_id=batch_id, request_hash=b"b", source_tracked=tracked, **terms)
    batches.finish_batch(
        session, batch_id=batch_id, applied=applied.applied, failed=0, total_amount=applied.total_amount, result={}
    )
    session.commit()
    assert applied.transaction_id is not None
    return applied.transaction_id


class TestBatches:
    def test_each_row_from_issuance_gets_its_own_lot_with_its_terms(self, session: Session) -> None:
        a, b = create_user(session).account_id, create_user(session).account_id
        issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
        txn = _apply_batch(session, source=issuance, tracked=False, rows=[(a, 5, 10, NOW + DAY), (b, 7, None, None)])
        written = {
            (lot.account_id, lot.source, lot.priority, lot.expires_at, lot.amount)
            for lot in lots.lots_of_transaction(session, transaction_id=txn)
        }
        assert written == {(a, "recharge", 10, NOW + DAY, 5), (b, "recharge", 50, None, 7)}

    def test_rows_from_a_pool_take_its_lots_in_row_order(self, session: Session) -> None:
        tenant = create_tenant(session)
        pool = tenant.pool_account_id
        a, b = (create_user(session, tenant=tenant).account_id for _ in range(2))
        soon = _expiry(session, _credit(session, pool, 6, priority=10, expires_at=NOW + DAY))
        _credit(session, pool, 100)
        txn = _apply_batch(session, source=pool, tracked=True, rows=[(a, 4, None, None), (b, 5, 30, NOW + 9 * DAY)])
        written = {
            (lot.account_id, lot.source, lot.priority, lot.expires_at, lot.amount)
            for lot in lots.lots_of_transaction(session, transaction_id=txn)
        }
        # Row 1 takes 4 of the pool's expiring lot; row 2 the other 2 (its expiry kept) and 3 that never expire
        # (its own expiry then), at its own priority.
        assert written == {
            (a, "transfer", 10, soon, 4),
            (b, "transfer", 30, soon, 2),
            (b, "transfer", 30, NOW + 9 * DAY, 3),
        }
