"""Webhook senders share out attempts fairly across tenants: the claim at the SQL level (fewest in flight first,
then the oldest due; a cap per tenant across all senders; a backlog is never read whole), and end to end, a
tenant whose endpoint swallows packets next to a healthy one."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from facemint.config import Settings
from facemint.webhooks.orm import WebhookDelivery, WebhookEvent
from facemint.webhooks.sender import CLAIM_CANDIDATES, MAX_LEASE_SECONDS, WebhookSender, claim_due
from tests.conftest import make_settings
from tests.factories import create_tenant
from tests.platform.webhook_helpers import (
    Receiver,
    make_failed_job,
    queue_events,
    serve_black_hole,
    serve_receiver,
    wait_for,
)

TIMEOUT = 1.0
CAP = 2


@pytest.fixture
def fair_settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        webhook_allowed_networks=["127.0.0.0/8"],
        webhook_timeout_seconds=TIMEOUT,
        webhook_max_attempts=3,
        webhook_backoff_seconds=[30],
        webhook_concurrency=8,
        webhook_max_in_flight_per_tenant=CAP,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as rec:
        yield rec


def age(session: Session, event: WebhookEvent, seconds: float) -> None:
    """Make `event` due since `seconds` ago."""
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event.id)
        .values(next_attempt_at=func.now() - timedelta(seconds=seconds))
    )
    session.commit()


def claim(session: Session, slots: int) -> list[int]:
    claims = claim_due(session, slots=slots, max_in_flight_per_tenant=CAP, lease_seconds=6.0)
    session.commit()
    return [c.id for c in claims]


class TestClaims:
    def test_the_fewest_in_flight_go_first_then_the_oldest_due(self, session: Session) -> None:
        url = "http://127.0.0.1:9/hook"
        a = queue_events(session, make_failed_job(session, tenant=create_tenant(session)), url=url, count=4)
        b = queue_events(session, make_failed_job(session, tenant=create_tenant(session)), url=url, count=2)
        [c] = queue_events(session, make_failed_job(session, tenant=create_tenant(session)), url=url, count=1)
        for event, seconds in zip([*a, *b, c], [50, 40, 30, 20, 10, 5, 1], strict=True):
            age(session, event, seconds)

        # One each first (A's, B's and C's oldest, oldest first), then a second for the oldest left: A's.
        assert claim(session, 4) == [a[0].id, b[0].id, c.id, a[1].id]
        # Another sender (its own transaction) sees the live leases: A is at its cap, B has room for one.
        assert claim(session, 10) == [b[1].id]
        assert claim(session, 10) == []

        held = session.execute(
            select(WebhookEvent.lease_token, WebhookEvent.lease_expires_at, WebhookEvent.next_attempt_at).where(
                WebhookEvent.id.in_([a[0].id, b[1].id])
            )
        ).all()
        assert len({row.lease_token for row in held}) == 2  # one token per claim
        for row in held:
            # Leased events are not due: next_attempt_at moves with the lease.
            assert row.lease_expires_at == row.next_attempt_at
            left = session.scalar(select(func.extract("epoch", row.lease_expires_at - func.now())))
            assert left is not None
            assert 4 < float(left) <= 6

    def test_an_expired_lease_stops_counting_and_is_taken_over(self, session: Session) -> None:
        first, second = queue_events(
            session, make_failed_job(session, tenant=create_tenant(session)), url="http://127.0.0.1:9/", count=2
        )
        assert sorted(claim(session, 8)) == sorted([first.id, second.id])
        assert claim(session, 8) == []
        # The sender holding `first` died: its lease runs out.
        past = func.now() - timedelta(seconds=1)
        session.execute(
            update(WebhookEvent).where(WebhookEvent.id == first.id).values(lease_expires_at=past, next_attempt_at=past)
        )
        session.commit()
        old_token = session.scalar(select(WebhookEvent.lease_token).where(WebhookEvent.id == first.id))
        assert claim(session, 8) == [first.id]
        new_token = session.scalar(select(WebhookEvent.lease_token).where(WebhookEvent.id == first.id))
        assert new_token != old_token

    def test_a_backlog_is_not_read_to_claim(self, session: Session, owner_engine: Engine) -> None:
        backlogged = make_failed_job(session, tenant=create_tenant(session))
        session.execute(
            text(
                """
                INSERT INTO webhook_events
                       (public_id, job_id, tenant_id, url, event_type, payload, status, attempts, next_attempt_at)
                SELECT 'msg_backlog_' || g, :job, :tenant, 'http://127.0.0.1:9/', 'job.failed', '{}', 'pending', 0,
                       now() - g * interval '1 second'
                  FROM generate_series(1, 20000) g
                """
            ),
            {"job": backlogged.id, "tenant": backlogged.tenant_id},
        )
        session.commit()
        others = [
            queue_events(session, make_failed_job(session, tenant=create_tenant(session)), url="http://127.0.0.1:9/")[0]
            for _ in range(3)
        ]
        with owner_engine.begin() as conn:
            conn.execute(text("ANALYZE webhook_events"))  # as autovacuum would have by now
        [plan] = session.execute(
            text("EXPLAIN (ANALYZE, FORMAT JSON) " + str(CLAIM_CANDIDATES)),
            {"slots": 8, "cap": CAP, "per_tenant": CAP, "max_lease": MAX_LEASE_SECONDS},
        ).scalar_one()
        session.rollback()
        read = rows_read(plan["Plan"], "webhook_events")
        assert read < 100, read  # a loose index scan over 4 tenants and a few rows each, never the 20,000

        claimed = claim(session, 8)
        assert len(claimed) == CAP + 3
        assert set(claimed) >= {event.id for event in others}


def rows_read(node: dict[str, Any], table: str) -> float:
    """Rows the plan read from `table` (returned or filtered away), over every loop, seq scans included."""
    total = 0.0
    if node.get("Relation Name") == table:
        per_loop = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        per_loop += node.get("Rows Removed by Index Recheck", 0)
        total += per_loop * node.get("Actual Loops", 1)
    for child in node.get("Plans", []):
        total += rows_read(child, table)
    return total


class InFlightWatch:
    """Samples the live leases per tenant from Postgres and keeps the highest count seen for each."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.peak: Counter[int] = Counter()
        self._sessions = sessions
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InFlightWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with self._sessions() as session:
            while not self._stop.wait(0.01):
                rows = session.execute(
                    text(
                        "SELECT tenant_id, count(*) FROM webhook_events"
                        " WHERE status = 'pending' AND lease_expires_at > now() GROUP BY tenant_id"
                    )
                ).all()
                session.rollback()
                for tenant_id, count in rows:
                    self.peak[tenant_id] = max(self.peak[tenant_id], count)


class TestBlackHoledTenant:
    @pytest.mark.parametrize(
        ("workers", "concurrency"),
        [(2, 8), (1, CAP)],
        ids=["two-workers-with-spare-slots", "one-worker-no-spare-slot"],
    )
    def test_the_healthy_tenant_gets_every_event_once_and_on_time(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        fair_settings: Settings,
        receiver: Receiver,
        workers: int,
        concurrency: int,
    ) -> None:
        """Tenant A's endpoint accepts connections and never answers (each attempt runs its whole 1 s deadline)
        and has 200 events due; tenant B's 100 events arrive one by one meanwhile. Every B event arrives once,
        within one attempt timeout of becoming due, whether there are spare slots (none of A's attempts is in
        B's way) or not (B waits at most for one of A's attempts to end). A is capped at 2 attempts in flight
        across both workers, and still served."""
        healthy_job = make_failed_job(session, tenant=create_tenant(session))
        with serve_black_hole() as hole:
            silent_job = make_failed_job(session, tenant=create_tenant(session))
            queue_events(session, silent_job, url=hole.url(), count=200)
            senders = [
                WebhookSender(session_factory, settings=fair_settings, concurrency=concurrency, idle_seconds=0.05)
                for _ in range(workers)
            ]
            with InFlightWatch(session_factory) as watch:
                for each in senders:
                    each.start()
                try:
                    wait_for(lambda: watch.peak[silent_job.tenant_id] == CAP, timeout=10)
                    for _ in range(100):
                        queue_events(session, healthy_job, url=receiver.url("/b"))
                        time.sleep(0.03)
                    wait_for(lambda: delivered(session, healthy_job.tenant_id) == 100, timeout=30)
                finally:
                    for each in senders:
                        each.stop()
            silent_attempts = hole.accepted

        events = session.scalars(select(WebhookEvent).where(WebhookEvent.tenant_id == healthy_job.tenant_id)).all()
        received = Counter(call.headers["webhook-id"] for call in receiver.calls_to("/b"))
        assert received == Counter({event.public_id: 1 for event in events})
        arrived = {call.headers["webhook-id"]: call.at for call in receiver.calls_to("/b")}
        waits = sorted(arrived[event.public_id] - event.created_at.timestamp() for event in events)
        # One attempt timeout plus slack for a claim, a send and a record on a busy test machine.
        assert waits[-1] < TIMEOUT + 0.75, waits[-10:]
        attempts = session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookEvent.tenant_id == healthy_job.tenant_id)
        )
        assert attempts == 100
        assert watch.peak[silent_job.tenant_id] == CAP
        assert silent_attempts >= 2 * CAP  # A was not starved either: its share kept working through its backlog


def delivered(session: Session, tenant_id: int) -> int:
    count = session.scalar(
        select(func.count()).where(WebhookEvent.tenant_id == tenant_id, WebhookEvent.status == "delivered")
    )
    session.rollback()
    return int(count or 0)
