"""Sealed books against real Postgres: batches chained in (xid, id) order, verification that names every
modified, deleted or inserted row, anchors kept outside the database, and a sealer that never holds up writers."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import holds as ledger_holds
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from billing.sealing import service as sealing
from billing.sealing.schemas import RowChange
from tests.factories import create_user, fund


def _funded_accounts(session: Session, n: int, amount: int = 100) -> list[int]:
    accounts = []
    for _ in range(n):
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=amount)
        accounts.append(user.account_id)
    return accounts


def _audit(session: Session, action: str, *, commit: bool = True) -> int:
    event_id = session.execute(
        text(
            "INSERT INTO audit_events (action, target_type, target_id, ip, after) "
            "VALUES (:action, 'test', 'x', '10.0.0.1', CAST(:after AS jsonb)) RETURNING id"
        ),
        {"action": action, "after": '{"b": 2, "a": [1, null, "x|y"]}'},
    ).scalar_one()
    if commit:
        session.commit()
    return int(event_id)


def _seal(session: Session, max_rows: int = 50_000) -> list[sealing.SealResult]:
    results = sealing.seal_all(session, max_rows=max_rows)
    session.commit()
    return results


def _count(session: Session, sql: str) -> int:
    return int(session.execute(text(sql)).scalar_one())


def _tamper(owner: Engine, sql: str, params: dict[str, object] | None = None) -> None:
    """What a database superuser can do (the service's role cannot): skip the append-only triggers."""
    with owner.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(sql), params or {})


@pytest.fixture
def sealed(session: Session) -> list[int]:
    """Three funded accounts and two audit events, all sealed. Yields the accounts."""
    accounts = _funded_accounts(session, 3)
    _audit(session, "test.one")
    _audit(session, "test.two")
    _seal(session)
    return accounts


class TestSealing:
    def test_a_seal_covers_every_finished_row_and_chains(self, session: Session) -> None:
        _funded_accounts(session, 4)
        _audit(session, "test.event")
        results = _seal(session, max_rows=3)
        entries = _count(session, "SELECT count(*) FROM ledger_entries")
        events = _count(session, "SELECT count(*) FROM audit_events")
        assert entries == 8
        by_stream = {s: [r for r in results if r.stream == s] for s in sealing.STREAMS}
        assert sum(r.n_rows for r in by_stream["ledger_entries"]) == entries
        assert sum(r.n_rows for r in by_stream["audit_events"]) == events
        assert [r.n_rows for r in by_stream["ledger_entries"]] == [3, 3, 2]
        for stream_results in by_stream.values():
            previous = sealing.GENESIS
            for seq, result in enumerate(stream_results, start=1):
                assert result.seq == seq
                assert result.prev_hash == previous
                assert result.hash == sealing.header_hash(previous, result.batch_root, result)
                leaves = session.execute(
                    text("SELECT leaf FROM ledger_seal_leaves WHERE stream = :s AND seq = :q ORDER BY row_id"),
                    {"s": result.stream, "q": seq},
                ).scalars()
                assert result.batch_root == hashlib.sha256(b"".join(bytes(leaf) for leaf in leaves)).digest()
                previous = result.hash
        # Batches follow each other in (xid, id) order, without overlap.
        positions = [(int(r.xid_from), r.first_id, int(r.xid_to), r.last_id) for r in by_stream["ledger_entries"]]
        for before, after in zip(positions, positions[1:], strict=False):
            assert (before[2], before[3]) < (after[0], after[1])
        assert _count(session, "SELECT count(*) FROM ledger_seal_leaves") == entries + events

    def test_sealing_again_with_nothing_new_adds_nothing(self, session: Session, sealed: list[int]) -> None:
        seals = _count(session, "SELECT count(*) FROM ledger_seals")
        assert _seal(session) == []
        assert _count(session, "SELECT count(*) FROM ledger_seals") == seals
        fund(session, account_id=sealed[0], amount=5)
        results = _seal(session)
        assert [(r.stream, r.n_rows, r.seq) for r in results] == [("ledger_entries", 2, 2)]

    def test_the_leaves_do_not_depend_on_the_session(self, session: Session, sealed: list[int]) -> None:
        """Canonical text: explicit UTC timestamps, jsonb's normalised text; a session's TimeZone or DateStyle
        changes nothing."""
        session.execute(text("SET TimeZone = 'Asia/Kathmandu'"))
        session.execute(text("SET DateStyle = 'SQL, DMY'"))
        session.execute(text("SET extra_float_digits = 0"))
        try:
            assert sealing.verify(session).intact
        finally:
            session.execute(text("RESET ALL"))

    def test_the_sealer_refuses_a_snapshot_transaction(self, session: Session) -> None:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        with pytest.raises(RuntimeError, match="READ COMMITTED"):
            sealing.seal(session, stream="ledger_entries", max_rows=10)

    def test_an_unknown_stream_is_refused(self, session: Session) -> None:
        with pytest.raises(ValueError, match="unknown stream"):
            sealing.seal(session, stream="holds", max_rows=10)


class TestVerify:
    def test_an_intact_ledger_verifies(self, session: Session, sealed: list[int]) -> None:
        fund(session, account_id=sealed[1], amount=7)  # not sealed yet: not a change
        report = sealing.verify(session)
        assert report.intact, report.as_dict()
        assert report.seals == {"ledger_entries": 1, "audit_events": 1}
        assert report.rows["ledger_entries"] == 6
        assert report.changes == []

    def test_nothing_sealed_verifies(self, session: Session) -> None:
        _funded_accounts(session, 1)
        report = sealing.verify(session)
        assert report.intact
        assert report.seals == {"ledger_entries": 0, "audit_events": 0}

    @pytest.mark.no_invariants
    def test_a_row_changed_with_the_triggers_off_is_named(
        self, session: Session, owner_engine: Engine, sealed: list[int]
    ) -> None:
        entry = _count(session, "SELECT min(id) FROM ledger_entries WHERE account_id = " + str(sealed[1]))
        event = _count(session, "SELECT max(id) FROM audit_events")
        _tamper(owner_engine, "UPDATE ledger_entries SET amount = amount + 1000 WHERE id = :id", {"id": entry})
        _tamper(owner_engine, "UPDATE audit_events SET after = '{\"a\": 1}' WHERE id = :id", {"id": event})
        report = sealing.verify(session)
        assert not report.intact
        assert set(report.changes) == {
            RowChange("ledger_entries", "modified", entry),
            RowChange("audit_events", "modified", event),
        }
        assert report.seal_problems == []  # the seals themselves still hold

    @pytest.mark.no_invariants
    def test_a_changed_timestamp_or_null_is_a_change(
        self, session: Session, owner_engine: Engine, sealed: list[int]
    ) -> None:
        first, second = session.execute(text("SELECT id FROM ledger_entries ORDER BY id LIMIT 2")).scalars()
        _tamper(
            owner_engine,
            "UPDATE ledger_entries SET created_at = created_at + interval '1 microsecond' WHERE id = :i",
            {"i": first},
        )
        assert (
            session.execute(text("SELECT reference FROM ledger_entries WHERE id = :i"), {"i": second}).scalar() is None
        )
        _tamper(owner_engine, "UPDATE ledger_entries SET reference = 'NULL' WHERE id = :i", {"i": second})
        assert sealing.verify(session).ids("ledger_entries", "modified") == [first, second]

    @pytest.mark.no_invariants
    def test_moving_a_row_out_of_the_sealed_range_is_a_change(
        self, session: Session, owner_engine: Engine, sealed: list[int]
    ) -> None:
        entry = _count(session, "SELECT max(id) FROM ledger_entries")
        _tamper(owner_engine, "UPDATE ledger_entries SET xid = pg_current_xact_id() WHERE id = :id", {"id": entry})
        assert sealing.verify(session).ids("ledger_entries", "modified") == [entry]

    @pytest.mark.no_invariants
    def test_a_deleted_row_is_named(self, session: Session, owner_engine: Engine, sealed: list[int]) -> None:
        entry = _count(session, "SELECT max(id) FROM ledger_entries")
        event = _count(session, "SELECT min(id) FROM audit_events")
        _tamper(owner_engine, "DELETE FROM ledger_entries WHERE id = :id", {"id": entry})
        _tamper(owner_engine, "DELETE FROM audit_events WHERE id = :id", {"id": event})
        report = sealing.verify(session)
        assert report.ids("ledger_entries", "deleted") == [entry]
        assert report.ids("audit_events", "deleted") == [event]
        assert report.change_counts == {"ledger_entries": {"deleted": 1}, "audit_events": {"deleted": 1}}

    @pytest.mark.no_invariants
    def test_a_row_inserted_into_the_sealed_range_is_named(
        self, session: Session, owner_engine: Engine, sealed: list[int]
    ) -> None:
        """A forged row dated into the sealed past: its xid (copied from a sealed row) puts it inside the range.
        Only the owner can write an xid (the service's role may not name the column)."""
        old_xid, txn = session.execute(
            text("SELECT xid::text, transaction_id FROM ledger_entries ORDER BY id LIMIT 1")
        ).one()
        revenue = ledger.system_account_id(session, kind=AccountKind.usage_revenue)
        with owner_engine.begin() as owner:
            forged = owner.execute(
                text(
                    "INSERT INTO ledger_entries (transaction_id, account_id, amount, xid) "
                    "VALUES (:t, :a, 1, CAST(:x AS xid8)), (:t, :a, -1, CAST(:x AS xid8)) RETURNING id"
                ),
                {"t": txn, "a": revenue, "x": old_xid},
            ).scalars()
            forged_ids = sorted(forged)
        event_xid = session.execute(text("SELECT xid::text FROM audit_events ORDER BY id LIMIT 1")).scalar_one()
        with owner_engine.begin() as owner:
            forged_event = owner.execute(
                text(
                    "INSERT INTO audit_events (action, target_type, xid) VALUES ('x', 'y', CAST(:x AS xid8)) "
                    "RETURNING id"
                ),
                {"x": event_xid},
            ).scalar_one()
        session.commit()
        report = sealing.verify(session)
        assert report.ids("ledger_entries", "inserted") == forged_ids
        assert report.ids("audit_events", "inserted") == [forged_event]
        # Sealing on does not launder them: they lie before the chain's position, so they stay outside it.
        _seal(session)
        assert sealing.verify(session).ids("ledger_entries", "inserted") == forged_ids

    @pytest.mark.no_invariants
    def test_a_tampered_seal_breaks_its_link(self, session: Session, owner_engine: Engine) -> None:
        _funded_accounts(session, 3)
        _seal(session, max_rows=2)  # seals 1, 2, 3
        _tamper(
            owner_engine, "UPDATE ledger_seals SET batch_root = sha256('x') WHERE stream = 'ledger_entries' AND seq = 2"
        )
        problems = {(p.seq, p.problem) for p in sealing.verify(session).seal_problems}
        assert problems == {
            (2, "hash does not match its contents"),
            (2, "batch root does not match its leaves"),
        }
        _tamper(owner_engine, "UPDATE ledger_seals SET hash = sha256('y') WHERE stream = 'ledger_entries' AND seq = 1")
        problems = {(p.seq, p.problem) for p in sealing.verify(session).seal_problems}
        assert (1, "hash does not match its contents") in problems
        assert (2, "prev_hash does not match the previous seal's hash") in problems

    @pytest.mark.no_invariants
    def test_a_deleted_seal_or_leaf_is_found(self, session: Session, owner_engine: Engine) -> None:
        _funded_accounts(session, 3)
        _seal(session, max_rows=2)
        _tamper(owner_engine, "DELETE FROM ledger_seals WHERE stream = 'ledger_entries' AND seq = 2")
        _tamper(
            owner_engine,
            "DELETE FROM ledger_seal_leaves WHERE row_id = (SELECT max(row_id) FROM ledger_seal_leaves "
            "WHERE stream = 'ledger_entries' AND seq = 3) AND stream = 'ledger_entries'",
        )
        report = sealing.verify(session)
        problems = {(p.seq, p.problem) for p in report.seal_problems}
        assert (3, "sequence gap before this seal") in problems
        assert (3, "prev_hash does not match the previous seal's hash") in problems
        assert (2, "2 leaves belong to no seal") in problems
        assert (3, "1 leaves for 2 sealed rows") in problems
        assert report.change_counts["ledger_entries"] == {"inserted": 1}

    @pytest.mark.no_invariants
    def test_a_rewritten_chain_is_caught_by_the_exported_digest(
        self, session: Session, owner_engine: Engine, sealed: list[int]
    ) -> None:
        """Someone who rewrites a row, every leaf and every seal leaves a consistent chain behind; only the digest
        kept outside the database tells."""
        anchors = sealing.anchors_from_digest(sealing.latest_digest(session))
        assert sealing.verify(session, anchors=anchors).intact
        _tamper(owner_engine, "UPDATE ledger_entries SET reference = 'rewritten' WHERE id = 1")
        _tamper(owner_engine, "DELETE FROM ledger_seal_leaves")
        _tamper(owner_engine, "DELETE FROM ledger_seals")
        _seal(session)
        assert sealing.verify(session).intact
        report = sealing.verify(session, anchors=anchors)
        assert report.anchors_checked == 2
        assert [(p.stream, p.seq) for p in report.seal_problems] == [("ledger_entries", 1)]
        assert "anchored digest" in report.seal_problems[0].problem

    def test_the_digest_names_the_latest_seal_of_each_stream(self, session: Session, sealed: list[int]) -> None:
        digest = sealing.latest_digest(session)
        assert digest["format"] == sealing.DIGEST_FORMAT
        entries = digest["streams"]["ledger_entries"]
        latest = session.execute(
            text("SELECT seq, hash FROM ledger_seals WHERE stream = 'ledger_entries' ORDER BY seq DESC LIMIT 1")
        ).one()
        assert (entries["seq"], entries["hash"]) == (latest.seq, bytes(latest.hash).hex())
        assert (entries["seals"], entries["rows"]) == (1, 6)
        assert digest["streams"]["audit_events"]["rows"] == _count(session, "SELECT count(*) FROM audit_events")


class TestConcurrency:
    def test_an_open_transaction_is_sealed_only_after_it_commits(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        [account] = _funded_accounts(session, 1)
        writer = session_factory()
        try:
            posting = ledger.transfer(
                writer,
                kind=TransactionKind.recharge,
                from_account_id=ledger.system_account_id(writer, kind=AccountKind.issuance),
                to_account_id=account,
                amount=5,
                idempotency_key="open-during-sealing",
                request_hash=b"t",
                tenant_id=None,
                actor="test",
                reason="open",
            )
            writer.flush()
            # The sealer neither waits for the open writer nor includes its rows.
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            session.execute(text("SET LOCAL statement_timeout = '5s'"))
            first = _seal(session)
            assert sum(r.n_rows for r in first if r.stream == "ledger_entries") == 2
            writer.commit()
        finally:
            writer.close()
        open_ids = set(
            session.execute(
                text("SELECT id FROM ledger_entries WHERE transaction_id = :t"), {"t": posting.transaction_id}
            ).scalars()
        )
        sealed_ids = set(session.execute(text("SELECT row_id FROM ledger_seal_leaves")).scalars())
        assert open_ids
        assert not open_ids & sealed_ids
        assert sealing.verify(session).intact
        later = _seal(session)
        assert [(r.stream, r.n_rows) for r in later] == [("ledger_entries", 2)]
        assert open_ids <= set(session.execute(text("SELECT row_id FROM ledger_seal_leaves")).scalars())
        assert sealing.verify(session).intact

    def test_writers_do_not_wait_for_an_open_sealer(
        self, session: Session, session_factory: sessionmaker[Session], sealed: list[int]
    ) -> None:
        fund(session, account_id=sealed[0], amount=3)
        sealer = session_factory()
        try:
            assert sealing.seal_all(sealer, max_rows=100)  # holds the sealer lock, uncommitted
            with session_factory() as writer:
                writer.execute(text("SET lock_timeout = '2s'"))
                writer.commit()
                try:
                    fund(writer, account_id=sealed[1], amount=4)
                    hold = ledger_holds.reserve(writer, account_id=sealed[2], amount=1, reference="r", ttl_seconds=60)
                    writer.commit()
                    ledger_holds.capture(writer, hold_id=hold.hold_id)
                    writer.commit()
                    _audit(writer, "test.during")
                finally:
                    writer.rollback()
                    writer.execute(text("RESET lock_timeout"))
                    writer.commit()
            sealer.commit()
        finally:
            sealer.close()
        _seal(session)
        assert sealing.verify(session).intact

    def test_concurrent_sealers_queue_and_do_not_fork(
        self, session: Session, session_factory: sessionmaker[Session], engine: Engine
    ) -> None:
        _funded_accounts(session, 2)
        first = session_factory()
        results: dict[str, object] = {}
        try:
            assert sealing.seal_all(first, max_rows=100)

            def second_sealer() -> None:
                with session_factory() as second:
                    try:
                        results["second"] = sealing.seal_all(second, max_rows=100)
                        second.commit()
                    except DBAPIError as exc:  # pragma: no cover - reported below
                        results["error"] = exc

            thread = threading.Thread(target=second_sealer)
            thread.start()
            time.sleep(0.5)
            assert thread.is_alive(), "the second sealer did not wait for the first"
            fund(session, account_id=_funded_accounts(session, 1)[0], amount=1)  # writers still go through
            first.commit()
            thread.join(timeout=30)
        finally:
            first.close()
        assert "error" not in results
        assert thread.is_alive() is False
        second = results["second"]
        assert isinstance(second, list)
        assert [(r.seq, r.n_rows) for r in second if r.stream == "ledger_entries"] == [(2, 4)]
        forks = session.execute(text("SELECT count(*) - count(DISTINCT (stream, seq)) FROM ledger_seals")).scalar()
        assert forks == 0
        assert sealing.verify(session).intact

    def test_a_sealer_that_does_not_wait_skips_while_another_seals(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        _funded_accounts(session, 1)
        first = session_factory()
        try:
            assert sealing.seal_all(first, max_rows=100)
            with session_factory() as second:
                second.execute(text("SET LOCAL lock_timeout = '1s'"))
                assert sealing.seal_all(second, max_rows=100, wait=False) == []
                assert sealing.seal(second, stream="audit_events", max_rows=100, wait=False) is None
                second.rollback()
            first.commit()
        finally:
            first.close()
        fund(session, account_id=_funded_accounts(session, 1)[0], amount=1)
        later = sealing.seal_all(session, max_rows=100, wait=False)
        session.commit()
        assert [r.seq for r in later if r.stream == "ledger_entries"] == [2]
