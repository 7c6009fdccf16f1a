"""Batch recharges under concurrency and at size: identical requests racing on one idempotency key apply once,
overlapping batches over the same users neither deadlock nor lose a credit, racing batches never overdraw a
pool, 20,000 rows go through, and CSV text survives the trip through COPY into the ledger."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.recharge.service import BATCH_LOCK_KEY
from facemint.app import create_app
from facemint.config import Settings
from facemint.users.orm import Role
from tests.factories import create_tenant
from tests.platform.recharge_helpers import (
    SINGLE,
    assert_problem,
    audit_events,
    balance_of,
    batch_entries,
    count,
    csv_body,
    fund_pool,
    post_batch,
    recharge_transactions,
    seed_users,
    staff,
    tenant_admin,
)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _lock_waiters(engine: Engine, *, batch_lock_only: bool) -> int:
    """Sessions waiting on a lock: any lock, or only the batch lock itself (not, say, a requester's four-eyes
    lock, which one requester's concurrent requests also wait on)."""
    with engine.connect() as conn:
        if batch_lock_only:
            # A bigint advisory key is split across classid (high 32 bits) and objid (low 32 bits).
            sql = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND (classid::bigint << 32 | objid::bigint) = :key"
            )
        else:
            sql = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        return int(conn.execute(text(sql), {"key": BATCH_LOCK_KEY}).scalar_one())


def _race(
    engine: Engine, calls: list[Callable[[], httpx.Response]], *, waiters: int, batch_lock_only: bool
) -> tuple[list[httpx.Response], int]:
    """Run `calls` at once while this test holds the batch lock, so they all reach the point where batches
    apply before any of them may go on; release it once `waiters` requests wait on a lock (or after 30 s).
    Returns the responses and how many requests were waiting together when the lock was released."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        barrier.wait(timeout=30)
        return call()

    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": BATCH_LOCK_KEY})
        holder.commit()
        try:
            with ThreadPoolExecutor(max_workers=len(calls)) as pool:
                futures = [pool.submit(run, call) for call in calls]
                deadline = time.monotonic() + 30  # generous: two test workers share two cores
                while time.monotonic() < deadline and _lock_waiters(engine, batch_lock_only=batch_lock_only) < waiters:
                    time.sleep(0.05)
                queued = _lock_waiters(engine, batch_lock_only=batch_lock_only)
                holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": BATCH_LOCK_KEY})
                holder.commit()
                responses = [f.result(timeout=60) for f in futures]
        finally:
            holder.execute(text("SELECT pg_advisory_unlock_all()"))
            holder.commit()
    return responses, queued


def test_identical_concurrent_requests_apply_one_batch(
    client: TestClient, session: Session, settings: Settings, engine: Engine
) -> None:
    operator = staff(session, settings, Role.operator)
    users = seed_users(session, create_tenant(session), 30, "same")
    csv = csv_body("user_id,amount", *(f"{uid},{i + 1}" for i, (uid, _, _) in enumerate(users)))
    n = 6

    def call() -> httpx.Response:
        return post_batch(client, operator, csv, key="one-key", mode="atomic")

    # One request takes its requester's four-eyes lock and waits for the batch lock; the others wait on the
    # requester's lock, then replay what the first applied.
    responses, queued = _race(engine, [call] * n, waiters=n, batch_lock_only=False)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * (n - 1) + [201], [r.text for r in responses]
    replays = [r for r in responses if r.status_code == 200]
    assert all(r.headers.get("Idempotent-Replayed") == "true" for r in replays)
    first = next(r for r in responses if r.status_code == 201).json()
    assert all(r.json() == first for r in replays)
    assert first["applied"] == 30
    assert [balance_of(session, account) for _, _, account in users] == list(range(1, 31))
    assert count(session, "recharge_batches") == 1
    assert recharge_transactions(session) == 1
    assert len(audit_events(session, "recharge.batch")) == 1
    assert queued == n, f"only {queued} of {n} requests overlapped"


def test_overlapping_batches_all_apply_without_deadlock(
    client: TestClient, session: Session, settings: Settings, engine: Engine
) -> None:
    """Two operators and two tenant admins (one pool) credit the same users, listed in different orders,
    at the same moment, alongside single recharges of the same users."""
    tenant = create_tenant(session)
    fund_pool(session, tenant, 1_000_000)
    users = seed_users(session, tenant, 200, "overlap")
    actors = [staff(session, settings, Role.operator) for _ in range(2)] + [
        tenant_admin(session, settings, tenant) for _ in range(2)
    ]
    rng = random.Random(7)
    expected = {account: 0 for _, _, account in users}
    calls: list[Callable[[], httpx.Response]] = []
    for index, actor in enumerate(actors):
        order = list(users)
        if index % 2:
            order.reverse()
        else:
            rng.shuffle(order)
        rows = []
        for _, email, account in order:
            amount = rng.randint(1, 100)
            expected[account] += amount
            rows.append(f"{email},{amount}")
        body = csv_body("email,amount", *rows)
        calls.append(lambda actor=actor, body=body, key=f"overlap-{index}": post_batch(client, actor, body, key=key))
    singles = users[:4]
    # Sent by two other tenant admins: a requester's requests are serialised (four-eyes' rolling total), so a
    # single recharge by a batch's own requester, waiting for the pool behind the batches, would keep that batch
    # from the race this test sets up.
    single_senders = [tenant_admin(session, settings, tenant) for _ in range(2)]
    for i, (user_id, _, account) in enumerate(singles):
        expected[account] += 5
        admin = single_senders[i % 2]
        calls.append(
            lambda admin=admin, user_id=user_id, i=i: client.post(
                SINGLE, json={"user_id": user_id, "amount": 5, "reason": "single"}, headers=admin.headers(f"s{i}")
            )
        )
    responses, queued = _race(engine, calls, waiters=len(actors), batch_lock_only=True)
    assert [r.status_code for r in responses] == [201] * len(calls), [r.text for r in responses]
    assert len({r.json()["transaction_id"] for r in responses}) == len(calls)
    assert {account: balance_of(session, account) for account in expected} == expected
    pool_spent = sum(r.json()["total_amount"] for r in responses[2:4]) + 5 * len(singles)
    assert balance_of(session, tenant.pool_account_id) == 1_000_000 - pool_spent
    assert count(session, "recharge_batches") == len(actors)
    assert queued == len(actors), f"only {queued} of {len(actors)} batches overlapped"


def test_racing_batches_never_overdraw_the_pool(
    client: TestClient, session: Session, settings: Settings, engine: Engine
) -> None:
    """Both batches pass the up-front pool check (each fits alone); the guarded debit stops the second."""
    tenant = create_tenant(session)
    fund_pool(session, tenant, 100)
    users = seed_users(session, tenant, 4, "pool")
    admins = [tenant_admin(session, settings, tenant) for _ in range(2)]
    bodies = [
        csv_body("email,amount", f"{users[0][1]},30", f"{users[1][1]},30"),
        csv_body("email,amount", f"{users[2][1]},30", f"{users[3][1]},30"),
    ]
    calls: list[Callable[[], httpx.Response]] = [
        lambda i=i: post_batch(client, admins[i], bodies[i], key=f"pool-{i}") for i in range(2)
    ]
    responses, queued = _race(engine, calls, waiters=2, batch_lock_only=True)
    assert sorted(r.status_code for r in responses) == [201, 402], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 402)
    assert_problem(refused, 402, "insufficient_tokens")
    assert balance_of(session, tenant.pool_account_id) == 40
    assert sum(balance_of(session, account) for _, _, account in users) == 60
    assert count(session, "recharge_batches") == 1
    assert queued == 2
    # The refused batch stored nothing: once the pool is topped up, the same key goes through.
    fund_pool(session, tenant, 100)
    loser = [i for i, r in enumerate(responses) if r.status_code == 402][0]
    retry = post_batch(client, admins[loser], bodies[loser], key=f"pool-{loser}")
    assert retry.status_code == 201, retry.text
    assert balance_of(session, tenant.pool_account_id) == 80


def test_csv_text_survives_copy_into_the_ledger(client: TestClient, session: Session, settings: Settings) -> None:
    """References with tabs, newlines, backslashes, commas and non-ASCII text; a BOM, CRLF line ends and a
    charset parameter; emails matched case-insensitively, non-ASCII included."""
    operator = staff(session, settings)
    tenant = create_tenant(session)
    users = seed_users(session, tenant, 2, "copy")
    session.execute(text("UPDATE users SET email = 'josé@exämple.test' WHERE id = :id"), {"id": users[1][0]})
    session.commit()
    references = ["tab\there\\back\nslash", 'comma, "quoted"']
    body = (
        "\ufeffemail,amount,reference\r\n"
        f'{users[0][1].upper()},5,"tab\there\\back\nslash"\r\n'
        'JOSÉ@EXÄMPLE.TEST,6,"comma, ""quoted"""\r\n'
    )
    response = post_batch(client, operator, body.encode(), key="copy", content_type="text/csv; charset=utf-8")
    assert response.status_code == 201, response.text
    entries = batch_entries(session, response.json()["transaction_id"])
    assert [(e["account_id"], e["amount"], e["row_no"], e["reference"]) for e in entries[1:]] == [
        (users[0][2], 5, 1, references[0]),
        (users[1][2], 6, 2, references[1]),
    ]


def test_two_overlapping_batches_without_a_forced_rendezvous(
    client: TestClient, session: Session, settings: Settings
) -> None:
    """The same race left to the scheduler, a few times over."""
    users = seed_users(session, create_tenant(session), 100, "free")
    operator, other = staff(session, settings), staff(session, settings)
    forward = csv_body("email,amount", *(f"{email},2" for _, email, _ in users))
    backward = csv_body("email,amount", *(f"{email},3" for _, email, _ in reversed(users)))
    rounds = 4
    for r in range(rounds):
        barrier = threading.Barrier(2)

        def go(actor: Any, body: str, key: str, barrier: threading.Barrier = barrier) -> httpx.Response:
            barrier.wait(timeout=30)
            return post_batch(client, actor, body, key=key)

        with ThreadPoolExecutor(max_workers=2) as pool:
            a = pool.submit(go, operator, forward, f"fwd-{r}")
            b = pool.submit(go, other, backward, f"bwd-{r}")
            statuses = [a.result(timeout=60).status_code, b.result(timeout=60).status_code]
        assert statuses == [201, 201]
    assert {balance_of(session, account) for _, _, account in users} == {5 * rounds}


@pytest.mark.slow
def test_a_twenty_thousand_row_batch(client: TestClient, session: Session, settings: Settings) -> None:
    operator = staff(session, settings)
    users = seed_users(session, create_tenant(session), 20_000, "big")
    rows = [f"{email},{1 + i % 97},inv-{i + 1}" for i, (_, email, _) in enumerate(users)]
    csv = csv_body("email,amount,reference", *rows)
    expected_total = sum(1 + i % 97 for i in range(len(users)))
    started = time.monotonic()
    response = post_batch(client, operator, csv, key="big", mode="atomic")
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text[:2000]
    body = response.json()
    assert (body["rows"], body["applied"], body["total_amount"], body["failed"]) == (20_000, 20_000, expected_total, [])
    assert elapsed < 15, f"20,000 rows took {elapsed:.1f}s"
    stats = session.execute(
        text(
            "SELECT count(*) AS n, sum(amount) FILTER (WHERE amount > 0) AS credited, "
            "count(DISTINCT row_no) AS row_nos, min(row_no) AS first, max(row_no) AS last "
            "FROM ledger_entries WHERE transaction_id = :id"
        ),
        {"id": body["transaction_id"]},
    ).one()
    assert (stats.n, stats.credited, stats.row_nos, stats.first, stats.last) == (
        20_001,
        expected_total,
        20_000,
        1,
        20_000,
    )
    for i in (0, 1, 9_999, 19_999):
        assert balance_of(session, users[i][2]) == 1 + i % 97
    reference = session.execute(
        text("SELECT reference FROM ledger_entries WHERE transaction_id = :id AND row_no = 12345"),
        {"id": body["transaction_id"]},
    ).scalar_one()
    assert reference == "inv-12345"
    again = post_batch(client, operator, csv, key="big", mode="atomic")
    assert again.status_code == 200
    assert again.json() == body


def test_a_single_recharge_does_not_wait_behind_a_batch_naming_its_pool(
    client: TestClient, session: Session, settings: Settings, engine: Engine
) -> None:
    """A batch waiting for the batch lock has written its row, whose foreign key share-locks the pool's account. A
    single recharge from that pool locks the account for a balance update only (NO KEY UPDATE), which that share
    lock allows: were it FOR UPDATE, the single would queue behind the batch, and every later batch behind it."""
    tenant = create_tenant(session)
    fund_pool(session, tenant, 1_000)
    (user_id, _, account), *_ = seed_users(session, tenant, 1, "keyshare")
    admin = tenant_admin(session, settings, tenant)
    with engine.connect() as batch_like:
        batch_like.execute(
            text("SELECT 1 FROM ledger_accounts WHERE id = :id FOR KEY SHARE"), {"id": tenant.pool_account_id}
        )
        with ThreadPoolExecutor(max_workers=1) as pool:
            single = pool.submit(
                client.post,
                SINGLE,
                json={"user_id": user_id, "amount": 7, "reason": "single"},
                headers=admin.headers("keyshare-single"),
            )
            try:
                response = single.result(timeout=20)
            finally:
                batch_like.rollback()
    assert response.status_code == 201, response.text
    assert balance_of(session, account) == 7
    assert balance_of(session, tenant.pool_account_id) == 993
