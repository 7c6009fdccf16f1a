"""Engine and sessions. The request (or job) boundary owns the transaction; services only flush. Work that must
follow the commit (queueing a job, waking a waiter, deleting files) is registered with `after_commit` and run by
the boundary once the commit has succeeded, never when it rolls back."""

from __future__ import annotations

import logging
import re
import select
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, column, create_engine, event, text
from sqlalchemy.engine import CursorResult, Dialect, ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect

from billing.db import metadata

logger = logging.getLogger("facemint.db")
_AFTER_COMMIT = "facemint.after_commit"
_AFTER_ROLLBACK = "facemint.after_rollback"
_BEFORE_COMMIT = "facemint.before_commit"


class Base(DeclarativeBase):
    # One MetaData for the whole schema: the service's tables and billing's tables migrate together and
    # the service's tables may reference billing's (never the other way round).
    metadata = metadata


def sqlalchemy_url(url: str) -> str:
    """Accept plain `postgresql://` URLs (as docker and most tools write them) and pin psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


class _WithoutRows(logging.Filter):
    """SQLAlchemy logs every result row at DEBUG (a root logger at DEBUG is enough): rows hold what the service
    reads, webhook secrets among them. Statements are still logged (their parameters hidden)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Row %r"


logging.getLogger("sqlalchemy.engine.Engine").addFilter(_WithoutRows())


def _withhold_detail(context: ExceptionContext) -> None:
    """Postgres's DETAIL quotes values (a failing row, a duplicate key) that hide_parameters does not reach: the
    error keeps its message and SQLSTATE (and `orig.diag` the detail, for code that needs it), its text loses it."""
    detail = getattr(getattr(context.original_exception, "diag", None), "message_detail", None)
    if not detail:
        return
    for exc in (context.original_exception, context.sqlalchemy_exception):
        if exc is not None and exc.args and isinstance(exc.args[0], str):
            exc.args = (exc.args[0].replace(detail, "(withheld: it may quote values)"), *exc.args[1:])


# A pooled connection that the server closed while it sat idle (a restart, pg_terminate_backend, a timeout) has its
# end (or the server's last message) waiting on its socket: every checkout looks with a zero-timeout poll, no round
# trip. One idle for longer than this is also pinged (SELECT 1), for a peer gone without closing. (SQLAlchemy's
# pool_pre_ping pinged on every checkout: a round trip, and a statement for Postgres, on every request.)
PING_AFTER_IDLE_SECONDS = 10.0
_IDLE_SINCE = "facemint.idle_since"


def _closed_by_server(dbapi_connection: Any) -> bool:
    """Anything readable on an idle connection's socket (data, EOF, an error) means the server has ended it: it
    sends nothing unasked to a connection that is not LISTENing."""
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _check_on_checkout(dialect: Dialect) -> Callable[..., None]:
    def checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: object) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None:  # fresh from connect()
            return
        if _closed_by_server(dbapi_connection):
            raise DisconnectionError("the server closed this pooled connection")
        if time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
            try:
                dialect.do_ping(dbapi_connection)
            except dialect.loaded_dbapi.Error as exc:
                if dialect.is_disconnect(exc, dbapi_connection, None):
                    raise DisconnectionError("a pooled connection idle for a while did not answer") from exc
                raise

    return checkout


def _mark_idle(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int | None = None) -> Engine:
    """`max_overflow` (default: twice `pool_size`) connections beyond the pool are opened when it is short and
    closed as they come back."""
    engine = create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size * 2 if max_overflow is None else max_overflow,
        pool_recycle=1800,
        # A failed statement's error (and any SQL logging) must never carry the bound values: they include
        # password hashes, key hashes, webhook secrets and customers' data.
        hide_parameters=True,
    )
    event.listen(engine, "handle_error", _withhold_detail)
    # A DisconnectionError raised on checkout makes the pool drop that connection and hand out a new one.
    event.listen(engine.pool, "checkout", _check_on_checkout(engine.dialect))
    event.listen(engine.pool, "checkin", _mark_idle)
    return engine


_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")


class PreparedStatement:
    """A statement Postgres plans once per connection: PREPAREd by name the first time a pooled connection runs it,
    then EXECUTEd by name (psycopg2 never prepares, so a plain statement is parsed and planned on every call).

    `sql` names its parameters `:name` (never `::type` casts: use CAST), each with its Postgres type in `types`.
    A prepared statement outlives the transaction it was made in (a rollback keeps it) and ends with its connection;
    the record of which are prepared lives in the connection's `info`, which the pool clears when it replaces a
    connection. Postgres re-plans it by itself after DDL on what it reads. (A pooler that resets server sessions
    between transactions, PgBouncer in transaction mode, would lose them: Facemint connects to Postgres directly.)"""

    def __init__(self, name: str, sql: str, types: Mapping[str, str]) -> None:
        if "%" in sql:
            raise ValueError("no % in a prepared statement: the driver would read it as a parameter marker")
        order = list(types)
        unknown = set(_PARAMETER.findall(sql)) - set(order)
        if unknown:
            raise ValueError(f"parameters without a type: {sorted(unknown)}")
        self.name = name
        body = _PARAMETER.sub(lambda m: f"${order.index(m.group(1)) + 1}", sql)
        self._prepare = f"PREPARE {name} ({', '.join(types.values())}) AS {body}"
        self._execute: TextClause | TextualSelect = text(f"EXECUTE {name}({', '.join(':' + p for p in order)})")
        self._columns_known = False

    def execute(self, session: Session, params: Mapping[str, Any]) -> CursorResult[Any]:
        connection = session.connection()
        prepared: set[str] = connection.info.setdefault("facemint.prepared", set())
        if self.name not in prepared:
            connection.exec_driver_sql(self._prepare)
            prepared.add(self.name)
        result = connection.execute(self._execute, dict(params))
        if not self._columns_known and result.cursor is not None and result.cursor.description is not None:
            # Named once: SQLAlchemy then keeps the result's description with the compiled statement instead of
            # working it out again for every call (a 43-column RETURNING cost ~80 µs a call).
            names = [d[0] for d in result.cursor.description]
            assert isinstance(self._execute, TextClause)
            self._execute = self._execute.columns(*(column(n) for n in names))
            self._columns_known = True
        return result


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run `callback` once the boundary has committed this session's transaction (dropped on rollback)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def before_commit(session: Session, check: Callable[[], object]) -> None:
    """Run `check` in the transaction right before the boundary commits it, on the same thread as the COMMIT. For a
    check that must serialise concurrent transactions (a transaction-scoped lock): the lock is then held only for
    the check and the commit, never across the request's thread hops. A check that raises rolls back."""
    session.info.setdefault(_BEFORE_COMMIT, []).append(check)


def run_before_commit(session: Session) -> None:
    """The boundary runs these in the transaction, just before its COMMIT and on the same thread."""
    for check in session.info.pop(_BEFORE_COMMIT, []):
        check()


def after_rollback(session: Session, callback: Callable[[], object]) -> None:
    """Run `callback` if the boundary rolls the transaction back before committing (an error in the request).
    Not run when the COMMIT itself fails: its outcome is unknown, so undoing anything could undo committed work
    (the orphan sweep handles what is left)."""
    session.info.setdefault(_AFTER_ROLLBACK, []).append(callback)


def has_hooks(session: Session) -> bool:
    return bool(session.info.get(_AFTER_COMMIT) or session.info.get(_AFTER_ROLLBACK))


def forget_hooks(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
    session.info.pop(_AFTER_ROLLBACK, None)
    session.info.pop(_BEFORE_COMMIT, None)


def run_after_commit(session: Session) -> None:
    """The boundary calls this right after a successful commit. Each callback runs once; one that fails is
    logged and the rest still run (the commit stands: what follows it must be safe to lose, e.g. a queue entry
    the dispatcher recreates)."""
    session.info.pop(_AFTER_ROLLBACK, None)
    _run(session.info.pop(_AFTER_COMMIT, []))


def run_after_rollback(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
    session.info.pop(_BEFORE_COMMIT, None)
    _run(session.info.pop(_AFTER_ROLLBACK, []))


def _run(callbacks: list[Callable[[], object]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.warning("after-transaction step %s failed", getattr(callback, "__name__", callback), exc_info=True)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A job or CLI boundary: the before-commit checks and the commit on success (then the after-commit steps),
    a rollback on any error (then the after-rollback steps)."""
    session = factory()
    try:
        try:
            yield session
            run_before_commit(session)
        except BaseException:
            session.rollback()
            run_after_rollback(session)
            raise
        try:
            session.commit()
        except BaseException:
            forget_hooks(session)
            raise
        run_after_commit(session)
    finally:
        session.close()


@contextmanager
def outside_transaction(session: Session) -> Iterator[None]:
    """Statements in the block run outside any transaction, each committed as it runs (psycopg2's autocommit: no
    BEGIN and no COMMIT round trips), and the session's connection goes back to the pool at the end (its
    transaction ends: a commit, or a rollback on error, neither of which has anything to send). For reads before
    a long wait, such as an upload. The session must not have begun yet.

    Set on the DBAPI connection itself: SQLAlchemy's `isolation_level="AUTOCOMMIT"` option costs one more round trip
    (a SET) to undo when the connection goes back to the pool."""
    if session.in_transaction():
        raise RuntimeError("outside_transaction needs a session that has not begun")
    dbapi_connection = session.connection().connection.dbapi_connection
    assert dbapi_connection is not None
    dbapi_connection.autocommit = True
    try:
        try:
            yield
        finally:
            if not dbapi_connection.closed:  # a connection lost meanwhile is being replaced anyway
                dbapi_connection.autocommit = False
    except BaseException:
        session.rollback()
        raise
    session.commit()


@contextmanager
def snapshot_session(engine: Engine) -> Iterator[Session]:
    """A read-only session on one REPEATABLE READ snapshot: every query sees the ledger at the same instant."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
        connection.execute(text("SET TRANSACTION READ ONLY"))
        with Session(bind=connection) as session:
            yield session
        connection.rollback()
