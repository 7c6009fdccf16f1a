"""The ledger against real Postgres: holds, postings, idempotency, and the rules the database enforces."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from billing.errors import (
    AlreadyReversed,
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
)
from billing.ledger import holds as ledger_holds
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from tests.factories import create_user, fund


def _account(session: Session, amount: int = 0) -> int:
    user = create_user(session)
    if amount:
        fund(session, account_id=user.account_id, amount=amount)
    return user.account_id


def _reserve(session: Session, account_id: int, amount: int, ttl: int = 600) -> int:
    hold = ledger_holds.reserve(
        session, account_id=account_id, amount=amount, reference=uuid.uuid4().hex, ttl_seconds=ttl
    )
    session.commit()
    return hold.hold_id


class TestHolds:
    def test_reserve_moves_available_to_held(self, session: Session) -> None:
        account = _account(session, 100)
        _reserve(session, account, 30)
        balance = ledger.get_balance(session, account_id=account)
        assert (balance.balance, balance.held, balance.available) == (100, 30, 70)

    def test_reserve_beyond_available_is_refused_and_leaves_nothing(self, session: Session) -> None:
        account = _account(session, 10)
        with pytest.raises(InsufficientTokens) as info:
            ledger_holds.reserve(session, account_id=account, amount=11, reference="too-much", ttl_seconds=60)
        session.rollback()
        assert info.value.extra == {"needed": 11, "available": 10}
        assert session.execute(text("SELECT count(*) FROM holds")).scalar_one() == 0
        assert ledger.get_balance(session, account_id=account).held == 0

    def test_same_reference_replays_the_first_hold(self, session: Session) -> None:
        account = _account(session, 100)
        first = ledger_holds.reserve(session, account_id=account, amount=5, reference="job-1", ttl_seconds=60)
        session.commit()
        again = ledger_holds.reserve(session, account_id=account, amount=5, reference="job-1", ttl_seconds=60)
        session.commit()
        assert again.hold_id == first.hold_id
        assert again.replayed
        assert ledger.get_balance(session, account_id=account).held == 5
        with pytest.raises(IdempotencyConflict):
            ledger_holds.reserve(session, account_id=account, amount=6, reference="job-1", ttl_seconds=60)

    def test_capture_debits_once_and_releases_the_rest(self, session: Session) -> None:
        account = _account(session, 100)
        hold = _reserve(session, account, 30)
        result = ledger_holds.capture(session, hold_id=hold, amount=20)
        session.commit()
        assert result.captured_amount == 20
        assert not result.replayed
        balance = ledger.get_balance(session, account_id=account)
        assert (balance.balance, balance.held) == (80, 0)
        replay = ledger_holds.capture(session, hold_id=hold, amount=20)
        session.commit()
        assert replay.replayed
        assert ledger.get_balance(session, account_id=account).balance == 80
        with pytest.raises(HoldAlreadyResolved):
            ledger_holds.capture(session, hold_id=hold, amount=10)
        session.rollback()
        with pytest.raises(HoldAlreadyResolved):
            ledger_holds.release(session, hold_id=hold)

    def test_capture_above_the_hold_is_refused(self, session: Session) -> None:
        account = _account(session, 100)
        hold = _reserve(session, account, 30)
        with pytest.raises(InvalidAmount):
            ledger_holds.capture(session, hold_id=hold, amount=31)
        session.rollback()
        assert ledger_holds.get_hold(session, hold_id=hold).status == "held"

    def test_release_returns_tokens_and_replays(self, session: Session) -> None:
        account = _account(session, 100)
        hold = _reserve(session, account, 40)
        assert not ledger_holds.release(session, hold_id=hold).replayed
        session.commit()
        assert ledger_holds.release(session, hold_id=hold).replayed
        session.commit()
        balance = ledger.get_balance(session, account_id=account)
        assert (balance.balance, balance.held) == (100, 0)
        with pytest.raises(HoldAlreadyResolved):
            ledger_holds.capture(session, hold_id=hold)

    def test_expired_holds_are_released_by_the_sweeper(self, session: Session) -> None:
        account = _account(session, 100)
        due = _reserve(session, account, 10, ttl=0)
        kept = _reserve(session, account, 20, ttl=600)
        assert ledger_holds.expire_due_holds(session) == [due]
        session.commit()
        assert ledger_holds.get_hold(session, hold_id=due).status == "expired"
        assert ledger_holds.get_hold(session, hold_id=kept).status == "held"
        assert ledger.get_balance(session, account_id=account).held == 20
        assert ledger_holds.expire_due_holds(session) == []

    @pytest.mark.parametrize("synchronous", [True, False])
    def test_the_commit_policy_applies_to_the_holding_transaction_only(
        self, session: Session, synchronous: bool
    ) -> None:
        """`synchronous_commit=False` is the hot-account policy: the reserve's and the capture's transactions commit
        without waiting for the WAL flush, and the next transaction is back to the server's setting."""

        def policy() -> str:
            return str(session.execute(text("SHOW synchronous_commit")).scalar_one())

        account = _account(session, 100)
        hold = ledger_holds.reserve(
            session,
            account_id=account,
            amount=10,
            reference=uuid.uuid4().hex,
            ttl_seconds=600,
            synchronous_commit=synchronous,
        )
        assert policy() == ("on" if synchronous else "off")
        session.commit()
        assert policy() == "on"
        session.commit()
        ledger_holds.capture(session, hold_id=hold.hold_id, synchronous_commit=synchronous)
        assert policy() == ("on" if synchronous else "off")
        session.commit()
        balance = ledger.get_balance(session, account_id=account)
        assert (balance.balance, balance.held) == (90, 0)


class TestConcurrency:
    def test_fifty_threads_reserving_against_ten_tokens(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        account = _account(session, 10)
        barrier = threading.Barrier(50)

        def attempt(i: int) -> str:
            with session_factory() as s:
                barrier.wait()
                try:
                    ledger_holds.reserve(s, account_id=account, amount=1, reference=f"race-{i}", ttl_seconds=60)
                    s.commit()
                    return "ok"
                except InsufficientTokens:
                    s.rollback()
                    return "refused"

        with ThreadPoolExecutor(max_workers=50) as pool:
            outcomes = Counter(pool.map(attempt, range(50)))
        assert outcomes == {"ok": 10, "refused": 40}
        balance = ledger.get_balance(session, account_id=account)
        assert (balance.balance, balance.held, balance.available) == (10, 10, 0)

    def test_capture_racing_release_resolves_exactly_one(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        account = _account(session, 1000)
        for _ in range(15):
            hold = _reserve(session, account, 10)
            barrier = threading.Barrier(2)

            def run(action: str, hold_id: int = hold, barrier: threading.Barrier = barrier) -> str:
                with session_factory() as s:
                    barrier.wait()
                    try:
                        if action == "capture":
                            ledger_holds.capture(s, hold_id=hold_id)
                        else:
                            ledger_holds.release(s, hold_id=hold_id)
                        s.commit()
                        return action
                    except HoldAlreadyResolved:
                        s.rollback()
                        return "lost"

            with ThreadPoolExecutor(max_workers=2) as pool:
                results = sorted(pool.map(run, ["capture", "release"]))
            assert results.count("lost") == 1, results
            status = ledger_holds.get_hold(session, hold_id=hold).status
            assert status == ("captured" if "capture" in results else "released")
        captured = session.execute(text("SELECT count(*) FROM holds WHERE status = 'captured'")).scalar_one()
        assert ledger.get_balance(session, account_id=account).balance == 1000 - 10 * captured

    def test_sweepers_and_capture_race_on_expired_holds(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        account = _account(session, 1000)
        holds = [_reserve(session, account, 1, ttl=0) for _ in range(40)]
        barrier = threading.Barrier(4)

        def sweep(_: int) -> list[int]:
            with session_factory() as s:
                barrier.wait()
                done = ledger_holds.expire_due_holds(s, limit=10)
                s.commit()
                return done

        def capture_all(_: int) -> list[int]:
            won = []
            with session_factory() as s:
                barrier.wait()
                for hold in holds:
                    try:
                        ledger_holds.capture(s, hold_id=hold)
                        s.commit()
                        won.append(hold)
                    except HoldAlreadyResolved:
                        s.rollback()
            return won

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(sweep, i) for i in range(3)] + [pool.submit(capture_all, 0)]
            results = [f.result() for f in futures]
        expired = [h for r in results[:3] for h in r]
        captured = results[3]
        assert len(expired) == len(set(expired))
        assert set(expired).isdisjoint(captured)
        # The sweepers took at most 30 between them; the capture loop resolves every other hold.
        resolved = session.execute(text("SELECT count(*) FROM holds WHERE status <> 'held'")).scalar_one()
        assert resolved == 40
        assert ledger.get_balance(session, account_id=account).held == 0


class TestPostings:
    def test_transfer_replays_and_refuses_a_different_body(self, session: Session) -> None:
        account = _account(session)
        issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
        kwargs = dict(
            kind=TransactionKind.recharge,
            from_account_id=issuance,
            to_account_id=account,
            idempotency_key="k-1",
            tenant_id=None,
            actor="test",
        )
        first = ledger.transfer(session, amount=50, request_hash=b"a", **kwargs)  # type: ignore[arg-type]
        session.commit()
        again = ledger.transfer(session, amount=50, request_hash=b"a", **kwargs)  # type: ignore[arg-type]
        session.commit()
        assert again.replayed
        assert again.transaction_id == first.transaction_id
        with pytest.raises(IdempotencyConflict):
            ledger.transfer(session, amount=51, request_hash=b"b", **kwargs)  # type: ignore[arg-type]
        session.rollback()
        assert ledger.get_balance(session, account_id=account).balance == 50

    def test_concurrent_same_key_applies_once(self, session: Session, session_factory: sessionmaker[Session]) -> None:
        account = _account(session)
        issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
        barrier = threading.Barrier(20)

        def attempt(_: int) -> int:
            with session_factory() as s:
                barrier.wait()
                posting = ledger.transfer(
                    s,
                    kind=TransactionKind.recharge,
                    from_account_id=issuance,
                    to_account_id=account,
                    amount=7,
                    idempotency_key="same-key",
                    request_hash=b"same",
                    tenant_id=None,
                    actor="test",
                )
                s.commit()
                return posting.transaction_id

        with ThreadPoolExecutor(max_workers=20) as pool:
            ids = set(pool.map(attempt, range(20)))
        assert len(ids) == 1
        assert ledger.get_balance(session, account_id=account).balance == 7

    def test_pool_to_user_transfer_never_overdraws_the_pool(self, session: Session) -> None:
        pool = ledger.open_account(session, kind=AccountKind.tenant_pool, tenant_id=None)
        session.commit()
        fund(session, account_id=pool, amount=5)
        user = _account(session)
        with pytest.raises(InsufficientTokens):
            ledger.transfer(
                session,
                kind=TransactionKind.recharge,
                from_account_id=pool,
                to_account_id=user,
                amount=6,
                idempotency_key="pool-1",
                request_hash=b"x",
                tenant_id=None,
                actor="test",
            )
        session.rollback()
        assert ledger.get_balance(session, account_id=pool).balance == 5
        assert ledger.get_balance(session, account_id=user).balance == 0

    def test_reversal_posts_the_opposite_once(self, session: Session) -> None:
        account = _account(session)
        txn = fund(session, account_id=account, amount=30)
        reversal = ledger.reverse(
            session, transaction_id=txn, idempotency_key="rev-1", request_hash=b"r", actor="test", reason="mistake"
        )
        session.commit()
        assert reversal.amount == 30
        assert ledger.get_balance(session, account_id=account).balance == 0
        with pytest.raises(AlreadyReversed):
            ledger.reverse(
                session, transaction_id=txn, idempotency_key="rev-2", request_hash=b"r", actor="test", reason="again"
            )

    def test_reversal_of_spent_tokens_is_refused(self, session: Session) -> None:
        account = _account(session)
        txn = fund(session, account_id=account, amount=30)
        hold = _reserve(session, account, 20)
        ledger_holds.capture(session, hold_id=hold)
        session.commit()
        with pytest.raises(InsufficientTokens):
            ledger.reverse(
                session, transaction_id=txn, idempotency_key="rev-3", request_hash=b"r", actor="test", reason="x"
            )
        session.rollback()
        assert ledger.get_balance(session, account_id=account).balance == 10


class TestDatabaseRules:
    """What Postgres refuses even when the application code is wrong."""

    def _refused(self, session: Session, sql: str, **params: object) -> str:
        with pytest.raises(DBAPIError) as info:
            session.execute(text(sql), params)
        session.rollback()
        return str(info.value.orig)

    def _refused_to_owner(self, owner: Engine, sql: str, **params: object) -> str:
        """The service's role may not even try (tests/test_database_roles.py): the triggers refuse the owner too."""
        with pytest.raises(DBAPIError) as info, owner.begin() as conn:
            conn.execute(text(sql), params)
        return str(info.value.orig)

    def test_available_cannot_go_below_zero(self, session: Session) -> None:
        account = _account(session, 10)
        message = self._refused(session, "UPDATE ledger_accounts SET balance = -1 WHERE id = :id", id=account)
        assert "available_nonnegative" in message
        message = self._refused(session, "UPDATE ledger_accounts SET held = 11 WHERE id = :id", id=account)
        assert "available_nonnegative" in message

    def test_journal_is_append_only(self, session: Session, owner_engine: Engine) -> None:
        account = _account(session, 10)
        refused = self._refused_to_owner(
            owner_engine, "UPDATE ledger_entries SET amount = 99 WHERE account_id = :id", id=account
        )
        assert "append-only" in refused
        assert "append-only" in self._refused_to_owner(owner_engine, "DELETE FROM ledger_entries")
        assert "append-only" in self._refused_to_owner(owner_engine, "DELETE FROM ledger_transactions")
        assert "append-only" in self._refused_to_owner(owner_engine, "TRUNCATE ledger_entries CASCADE")
        assert "append-only" in self._refused_to_owner(owner_engine, "UPDATE audit_events SET action = 'x'")

    def test_unbalanced_transaction_is_refused(self, session: Session) -> None:
        account = _account(session)
        txn = session.execute(
            text(
                "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, amount) "
                "VALUES ('adjustment', 'unbalanced', 'x', 5) RETURNING id"
            )
        ).scalar_one()
        message = self._refused(
            session,
            "INSERT INTO ledger_entries (transaction_id, account_id, amount) VALUES (:t, :a, 5)",
            t=txn,
            a=account,
        )
        assert "does not sum to zero" in message

    def test_a_resolved_hold_cannot_be_resolved_again(self, session: Session, owner_engine: Engine) -> None:
        account = _account(session, 10)
        hold = _reserve(session, account, 5)
        ledger_holds.release(session, hold_id=hold)
        session.commit()
        message = self._refused(
            session,
            "UPDATE holds SET status = 'captured', captured_amount = 5 WHERE id = :id",
            id=hold,
        )
        assert "already released" in message
        assert "never deleted" in self._refused_to_owner(owner_engine, "DELETE FROM holds WHERE id = :id", id=hold)

    def test_a_temporary_table_cannot_stand_in_for_the_journal(self, session: Session) -> None:
        account = _account(session)
        txn = session.execute(
            text(
                "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, amount) "
                "VALUES ('adjustment', 'shadowed', 'x', 5) RETURNING id"
            )
        ).scalar_one()
        # A session-local table named like the journal, ahead of it on the default search_path.
        session.execute(text("CREATE TEMP TABLE ledger_entries (transaction_id bigint, amount bigint)"))
        message = self._refused(
            session,
            "INSERT INTO public.ledger_entries (transaction_id, account_id, amount) VALUES (:t, :a, 5)",
            t=txn,
            a=account,
        )
        assert "does not sum to zero" in message
