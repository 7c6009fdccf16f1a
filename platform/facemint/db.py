"""Engine and sessions. The request (or job) boundary owns the transaction; services only flush."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from billing.db import metadata


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


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    return create_engine(
        sqlalchemy_url(url),
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_recycle=1800,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A job or CLI boundary: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
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
