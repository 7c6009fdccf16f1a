"""The engine and session helpers of `facemint.db`: statements prepared once per connection, pooled connections the
server closed replaced at checkout (no ping per checkout), and reads outside any transaction."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from facemint import db
from facemint.db import PreparedStatement, make_engine, make_sessionmaker, outside_transaction

_DOUBLE = PreparedStatement(
    "fm_test_double",
    "SELECT CAST(:n AS bigint) * 2 AS doubled, :label AS label",
    {
        "n": "bigint",
        "label": "text",
    },
)


@pytest.fixture
def small_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(small_engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(small_engine)


def _prepared_here(session: Session) -> list[str]:
    return list(session.execute(text("SELECT name FROM pg_prepared_statements ORDER BY name")).scalars())


def _statements_sent(engine: Engine) -> list[str]:
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *rest: sent.append(statement))
    return sent


class TestPreparedStatement:
    def test_prepared_once_per_connection_and_kept_across_rollbacks(
        self, sessions: sessionmaker[Session], small_engine: Engine
    ) -> None:
        sent = _statements_sent(small_engine)
        for n in range(3):
            with sessions() as session:
                row = _DOUBLE.execute(session, {"n": n, "label": f"call {n}"}).one()
                assert (row.doubled, row.label) == (2 * n, f"call {n}")
                session.rollback()
        assert sum(s.startswith("PREPARE fm_test_double") for s in sent) == 1
        assert sum(s.startswith("EXECUTE fm_test_double") for s in sent) == 3
        with sessions() as session:
            assert _prepared_here(session) == ["fm_test_double"]

    def test_a_replaced_connection_prepares_again(self, sessions: sessionmaker[Session], small_engine: Engine) -> None:
        with sessions() as session:
            assert _DOUBLE.execute(session, {"n": 1, "label": "a"}).one().doubled == 2
            session.connection().invalidate()  # as the pool does with a connection it finds dead
        with sessions() as session:
            assert _DOUBLE.execute(session, {"n": 2, "label": "b"}).one().doubled == 4
            assert _prepared_here(session) == ["fm_test_double"]

    def test_every_parameter_needs_a_type(self) -> None:
        with pytest.raises(ValueError, match="without a type"):
            PreparedStatement("fm_test_untyped", "SELECT :a, :b", {"a": "text"})


class TestCheckout:
    def test_a_connection_the_server_ended_is_replaced_without_an_error(
        self, sessions: sessionmaker[Session], small_engine: Engine, owner_engine: Engine
    ) -> None:
        with sessions() as session:
            first_pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            session.commit()
        with owner_engine.connect() as owner:
            assert owner.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid}).scalar_one()
            owner.execute(text("SELECT pg_sleep(0.2)"))  # the backend's exit reaches the client's socket
        with sessions() as session:
            assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() != first_pid

    def test_only_a_connection_idle_for_a_while_is_pinged(
        self, sessions: sessionmaker[Session], small_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pings: list[object] = []
        ping = small_engine.dialect.do_ping
        monkeypatch.setattr(small_engine.dialect, "do_ping", lambda conn: pings.append(conn) or ping(conn))
        for _ in range(3):
            with sessions() as session:
                session.execute(text("SELECT 1"))
                session.commit()
        assert pings == []  # fresh, then just used: no round trip before the work
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
        with sessions() as session:
            session.execute(text("SELECT 1"))
        assert len(pings) == 1


class TestOutsideTransaction:
    def test_statements_commit_as_they_run_and_the_connection_goes_back(
        self, sessions: sessionmaker[Session], small_engine: Engine, owner_engine: Engine
    ) -> None:
        with owner_engine.begin() as owner:
            owner.execute(text("CREATE TABLE fm_test_autocommit (n int)"))
            owner.execute(text("GRANT SELECT, INSERT ON fm_test_autocommit TO PUBLIC"))
        session = sessions()
        try:
            with outside_transaction(session):
                session.execute(text("INSERT INTO fm_test_autocommit VALUES (1)"))
                with owner_engine.connect() as other:  # committed already, seen from another connection
                    assert other.execute(text("SELECT count(*) FROM fm_test_autocommit")).scalar_one() == 1
            assert not session.in_transaction()
            assert small_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            # The next statement begins a real transaction again, on a connection from the pool.
            session.execute(text("INSERT INTO fm_test_autocommit VALUES (2)"))
            session.rollback()
            with owner_engine.connect() as other:
                assert other.execute(text("SELECT count(*) FROM fm_test_autocommit")).scalar_one() == 1
        finally:
            session.close()
            with owner_engine.begin() as owner:
                owner.execute(text("DROP TABLE fm_test_autocommit"))

    def test_each_statement_is_its_own_transaction(self, sessions: sessionmaker[Session]) -> None:
        with sessions() as session, outside_transaction(session):
            session.execute(text("SELECT pg_sleep(0.01)"))
            # In a transaction block now() is the block's start, older than this statement's.
            assert session.execute(text("SELECT now() = statement_timestamp()")).scalar_one()
