"""Fixtures for the SDK tests: one live `facemint serve` per module on the test Postgres and Redis (started once;
the tables are emptied after each test as everywhere), clients with API keys of real users, and a real worker for
the modules that run jobs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from facemint_client import AsyncFacemint, Facemint, RetryPolicy
from inference.models import write_demo_models
from tests.conftest import make_settings
from tests.factories import create_tenant, create_user, fund, issue_key
from tests.sdk.live import LiveApi, start_worker, stop_worker

# Quick retries: the tests wait on restarts and scripted refusals, not on production-sized backoff.
QUICK = RetryPolicy(max_retries=3, initial_delay=0.05, max_delay=0.2)


@dataclass(frozen=True)
class Person:
    user: User
    key: str

    @property
    def account_id(self) -> int:
        return self.user.account_id


@pytest.fixture(scope="module")
def live_settings(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    models = tmp_path_factory.mktemp("models")
    write_demo_models(models)
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path_factory.mktemp("data"),
        models_dir=models,
        engine_provider="cpu",
        job_heartbeat_seconds=0.2,
        job_stale_after_seconds=1.5,
        sweep_interval_seconds=0.2,
        job_redispatch_seconds=2.0,
        queue_name=f"sdk-{os.getpid()}",
    )


@pytest.fixture(scope="module")
def live_api(live_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    api = LiveApi(live_settings, tmp_path_factory.mktemp("logs"))
    api.start()
    yield api
    api.stop()


@pytest.fixture
def api(live_api: LiveApi) -> LiveApi:
    """The module's live API, running (a test that stopped it and failed before starting it again leaves it to
    be started here)."""
    if live_api.process is None or live_api.process.poll() is not None:
        live_api.start()
    return live_api


@pytest.fixture(scope="module")
def worker(live_settings: Settings, live_api: LiveApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    process = start_worker(live_settings, tmp_path_factory.mktemp("worker-logs"))
    yield
    stop_worker(process)


MakePerson = Callable[..., Person]


@pytest.fixture
def make_person(session: Session, live_settings: Settings) -> MakePerson:
    """`make_person(role, tenant=None, tokens=0)`: a user of that role with an API key of all its role's scopes,
    funded with `tokens`."""

    def make(role: Role = Role.member, *, tenant: Tenant | None = None, tokens: int = 0) -> Person:
        user = create_user(session, tenant=tenant, role=role)
        if tokens:
            fund(session, account_id=user.account_id, amount=tokens)
        return Person(user=user, key=issue_key(session, live_settings, user))

    return make


@pytest.fixture
def tenant(session: Session) -> Tenant:
    return create_tenant(session)


@pytest.fixture
def client_for(api: LiveApi) -> Iterator[Callable[..., Facemint]]:
    """`client_for(person or key, **options)`: a sync client of the live API with the person's key (closed
    after)."""
    made: list[Facemint] = []

    def make(caller: Person | str, **options: object) -> Facemint:
        options.setdefault("retry", QUICK)
        key = caller.key if isinstance(caller, Person) else caller
        client = Facemint(key, base_url=api.url, **options)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def async_client_for(api: LiveApi) -> Callable[..., AsyncFacemint]:
    """`async_client_for(person or key, **options)`: an async client (the test closes it: `async with`)."""

    def make(caller: Person | str, **options: object) -> AsyncFacemint:
        options.setdefault("retry", QUICK)
        key = caller.key if isinstance(caller, Person) else caller
        return AsyncFacemint(key, base_url=api.url, **options)  # type: ignore[arg-type]

    return make


def balance(engine: Engine, account_id: int) -> tuple[int, int]:
    """(balance, held) of an account, read from the database."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT balance, held FROM ledger_accounts WHERE id = :id"), {"id": account_id}).one()
    return int(row.balance), int(row.held)


def transactions(engine: Engine, *, kind: str, key: str) -> int:
    """Ledger transactions of `kind` whose idempotency key ends with `key` (the ledger namespaces keys)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM ledger_transactions WHERE kind = :kind AND idempotency_key LIKE :key"),
                {"kind": kind, "key": f"%{key}"},
            ).scalar_one()
        )
