"""Engine and sessions. The request (or job) boundary owns the transaction; services only flush. Work that must
follow the commit (queueing a job, waking a waiter, deleting files) is registered with `after_commit` and run by
the boundary once the commit has succeeded, never when it rolls back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

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


# A connection idle for longer than this is pinged before use (a Postgres restart or a proxy's idle cut would
# otherwise fail its first statement). One in steady use is not: a ping per checkout is a round trip per
# transaction, as much as the hold's own statement. A connection that dies between two uses a moment apart fails
# that one statement, as a dropped connection mid-transaction would; the error invalidates the whole pool, so it
# happens once per process, and callers already retry it (503 with Retry-After; settlements back off and retry).
PING_AFTER_IDLE_SECONDS = 5.0
_IDLE_SINCE = "facemint_idle_since"


def _mark_idle(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(engine: Engine) -> Callable[[Any, ConnectionPoolEntry, PoolProxiedConnection], None]:
    def ping(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("connection lost while idle") from exc
        if not alive:
            raise DisconnectionError("connection lost while idle")

    return ping


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    engine = create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_recycle=1800,
        # A failed statement's error (and any SQL logging) must never carry the bound values: they include
        # password hashes, key hashes, webhook secrets and customers' data.
        hide_parameters=True,
    )
    event.listen(engine, "handle_error", _withhold_detail)
    event.listen(engine, "checkin", _mark_idle)
    # Raising DisconnectionError at checkout makes the pool discard that connection and hand out a fresh one.
    event.listen(engine, "checkout", _ping_if_idle(engine))
    return engine


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
def snapshot_session(engine: Engine) -> Iterator[Session]:
    """A read-only session on one REPEATABLE READ snapshot: every query sees the ledger at the same instant."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
        connection.execute(text("SET TRANSACTION READ ONLY"))
        with Session(bind=connection) as session:
            yield session
        connection.rollback()
