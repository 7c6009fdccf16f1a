"""A batch recharge whose database session is killed in the middle of applying it: nothing of it stays, and the
same request sent again (same Idempotency-Key) applies it once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from facemint.app import create_app
from facemint.config import Settings
from tests.factories import create_tenant
from tests.platform.recharge_helpers import (
    assert_problem,
    audit_events,
    balance_of,
    count,
    csv_body,
    post_batch,
    recharge_transactions,
    seed_users,
    staff,
)

ROWS = 20_000


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _applying_backend(owner: Engine, *, timeout: float = 60.0) -> int:
    """The session running the batch's crediting statement, once it waits on the row this test locked."""
    deadline = time.monotonic() + timeout
    with owner.connect() as conn:
        while time.monotonic() < deadline:
            pid = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state = 'active' AND wait_event_type = 'Lock' AND query LIKE '%WITH debited AS%'"
                )
            ).scalar_one_or_none()
            conn.rollback()
            if pid is not None:
                return int(pid)
            time.sleep(0.05)
    raise AssertionError("the batch never reached its crediting statement")


@pytest.mark.slow
def test_a_batch_whose_session_is_killed_mid_apply_applies_once_when_resent(
    client: TestClient, session: Session, settings: Settings, owner_engine: Engine
) -> None:
    operator = staff(session, settings)
    users = seed_users(session, create_tenant(session), ROWS, "killed")
    csv = csv_body(
        "email,amount,reference", *(f"{email},{1 + i % 97},inv-{i + 1}" for i, (_, email, _) in enumerate(users))
    )
    expected_total = sum(1 + i % 97 for i in range(ROWS))

    # A row in the middle of the batch, locked by this test: the batch's one crediting statement (every row,
    # the journal and the balances together) stops there, part done, until its session is killed.
    with owner_engine.connect() as holder, ThreadPoolExecutor(1) as pool:
        holder.execute(text("SELECT 1 FROM ledger_accounts WHERE id = :id FOR UPDATE"), {"id": users[ROWS // 2][2]})
        first = pool.submit(post_batch, client, operator, csv, key="killed-batch", mode="atomic")
        backend = _applying_backend(owner_engine)
        with owner_engine.connect() as killer:
            # As the owner: the service's role may end only its own sessions.
            assert killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar_one()
            killer.commit()
        response = first.result(timeout=60)
        holder.rollback()
    assert_problem(response, 503, "database_unavailable")
    assert count(session, "recharge_batches") == 0
    assert recharge_transactions(session) == 0
    assert [balance_of(session, users[i][2]) for i in (0, ROWS // 2, ROWS - 1)] == [0, 0, 0]

    again = post_batch(client, operator, csv, key="killed-batch", mode="atomic")
    assert again.status_code == 201, again.text[:2000]
    body = again.json()
    assert (body["rows"], body["applied"], body["total_amount"], body["failed"]) == (ROWS, ROWS, expected_total, [])
    replay = post_batch(client, operator, csv, key="killed-batch", mode="atomic")
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == body

    batch = session.execute(text("SELECT id, applied_count, total_amount FROM recharge_batches")).one()
    assert (batch.id, batch.applied_count, batch.total_amount) == (body["batch_id"], ROWS, expected_total)
    journal = session.execute(
        text(
            "SELECT count(DISTINCT t.id) AS transactions, count(e.id) AS entries, "
            "sum(e.amount) FILTER (WHERE e.amount > 0) AS credited "
            "FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id WHERE t.batch_id = :id"
        ),
        {"id": batch.id},
    ).one()
    assert (journal.transactions, journal.entries, journal.credited) == (1, ROWS + 1, expected_total)
    assert recharge_transactions(session) == 1
    assert len(audit_events(session, "recharge.batch")) == 1
    for i in (0, 1, ROWS // 2, ROWS - 1):
        assert balance_of(session, users[i][2]) == 1 + i % 97
