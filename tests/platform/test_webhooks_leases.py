"""Webhook leases: extended while an attempt runs and until its outcome is recorded, so a second sender never
sends an event again because a lease ran out; an attempt never starts on a lease that cannot cover its deadline;
an outcome recorded after a takeover is only logged; stopping a sender lets its attempts finish."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from facemint.config import Settings
from facemint.webhooks import sender as sender_module
from facemint.webhooks.orm import WebhookDelivery, WebhookEvent
from facemint.webhooks.sender import Outcome, WebhookSender, claim_due, record_outcome
from tests.conftest import make_settings
from tests.factories import create_tenant
from tests.platform.webhook_helpers import (
    Receiver,
    make_failed_job,
    queue_events,
    reload,
    serve_receiver,
    wait_for,
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as rec:
        yield rec


def lease_settings(database_url: str, redis_url: str, *, timeout: float) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        webhook_allowed_networks=["127.0.0.0/8"],
        webhook_timeout_seconds=timeout,
        webhook_max_attempts=3,
        webhook_backoff_seconds=[30],
    )


def one_event(session: Session, url: str) -> WebhookEvent:
    [event] = queue_events(session, make_failed_job(session, tenant=create_tenant(session)), url=url)
    return event


def lease_left(session: Session, event: WebhookEvent) -> float:
    left = session.scalar(
        select(func.extract("epoch", WebhookEvent.lease_expires_at - func.now())).where(WebhookEvent.id == event.id)
    )
    session.rollback()
    return -1.0 if left is None else float(left)


def deliveries(session: Session, event: WebhookEvent) -> list[tuple[int, int | None]]:
    rows = session.execute(
        select(WebhookDelivery.attempt, WebhookDelivery.response_status)
        .where(WebhookDelivery.event_id == event.id)
        .order_by(WebhookDelivery.id)
    ).all()
    return [(row.attempt, row.response_status) for row in rows]


def in_background(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


class TestLeases:
    def test_an_attempt_longer_than_its_first_lease_is_not_claimed_again(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        database_url: str,
        redis_url: str,
        receiver: Receiver,
    ) -> None:
        settings = lease_settings(database_url, redis_url, timeout=3.0)
        receiver.delays["/slow"] = 2.0
        event = one_event(session, receiver.url("/slow"))
        first = WebhookSender(session_factory, settings=settings, lease_seconds=0.5, heartbeat_seconds=0.1)
        second = WebhookSender(session_factory, settings=settings, idle_seconds=0.05)
        try:
            running = in_background(first.deliver_due)
            wait_for(lambda: receiver.calls_to("/slow"))
            second.start()  # claims every 50 ms from now on
            time.sleep(1.0)  # twice the first lease
            assert lease_left(session, event) > 0.5
            running.join(10)
            assert not running.is_alive()
        finally:
            second.stop()
            first.stop()
        assert len(receiver.calls_to("/slow")) == 1
        event = reload(session, event)
        assert (event.status, event.attempts, event.lease_token, event.lease_expires_at) == ("delivered", 1, None, None)
        assert deliveries(session, event) == [(1, 200)]

    def test_the_heartbeat_holds_the_lease_until_the_outcome_is_recorded(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        database_url: str,
        redis_url: str,
        receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The database is slow to take the outcome (3 s) long after the attempt ended: the lease the attempt
        # started with (its 0.5 s deadline plus 2 s) has run out by then, and only the heartbeat keeps it.
        settings = lease_settings(database_url, redis_url, timeout=0.5)
        event = one_event(session, receiver.url("/ok"))
        real_record = sender_module.record_outcome
        recording = threading.Event()

        def slow_record(*args: Any, **kwargs: Any) -> bool:
            recording.set()
            time.sleep(3.0)
            return real_record(*args, **kwargs)

        monkeypatch.setattr(sender_module, "record_outcome", slow_record)
        first = WebhookSender(session_factory, settings=settings, lease_seconds=0.3, heartbeat_seconds=0.1)
        second = WebhookSender(session_factory, settings=settings, idle_seconds=0.05)
        try:
            running = in_background(first.deliver_due)
            assert recording.wait(5)
            monkeypatch.setattr(sender_module, "record_outcome", real_record)  # the second sender records promptly
            second.start()
            running.join(10)
            assert not running.is_alive()
        finally:
            second.stop()
            first.stop()
        assert len(receiver.calls_to("/ok")) == 1
        event = reload(session, event)
        assert (event.status, event.attempts, event.lease_token) == ("delivered", 1, None)
        assert deliveries(session, event) == [(1, 200)]

    def test_an_attempt_never_starts_on_a_lease_it_cannot_extend(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        database_url: str,
        redis_url: str,
        receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Right after the claim, the lease is too short to cover the deadline (a stalled process, say) and
        # another sender has taken the event over: the attempt is not made.
        settings = lease_settings(database_url, redis_url, timeout=1.0)
        event = one_event(session, receiver.url("/ok"))
        real_claim = sender_module.claim_due

        def claim_then_taken_over(claim_session: Session, **kwargs: Any) -> list[sender_module.Claim]:
            claims = real_claim(claim_session, **kwargs)
            later = func.now() + timedelta(seconds=60)
            claim_session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event.id)
                .values(lease_token="someone-else", lease_expires_at=later, next_attempt_at=later)
            )
            return [dataclasses.replace(claim, lease_seconds_left=0.1) for claim in claims]

        monkeypatch.setattr(sender_module, "claim_due", claim_then_taken_over)
        with WebhookSender(session_factory, settings=settings) as sender:
            assert sender.deliver_due() == 1
        assert receiver.calls == []
        event = reload(session, event)
        assert (event.status, event.attempts, event.lease_token) == ("pending", 0, "someone-else")
        assert deliveries(session, event) == []

    def test_an_outcome_after_a_takeover_is_only_logged(
        self, session: Session, database_url: str, redis_url: str
    ) -> None:
        settings = lease_settings(database_url, redis_url, timeout=1.0)
        event = one_event(session, "http://127.0.0.1:9/hook")
        [mine] = claim_due(session, slots=1, max_in_flight_per_tenant=2, lease_seconds=5.0)
        session.commit()
        # This sender stalls past its lease; another takes the event over.
        past = func.now() - timedelta(seconds=1)
        session.execute(
            update(WebhookEvent).where(WebhookEvent.id == event.id).values(lease_expires_at=past, next_attempt_at=past)
        )
        session.commit()
        [theirs] = claim_due(session, slots=1, max_in_flight_per_tenant=2, lease_seconds=5.0)
        session.commit()
        assert theirs.id == mine.id
        assert theirs.lease_token != mine.lease_token

        assert not record_outcome(session, mine, Outcome(200, None, 12.0), settings=settings)
        session.commit()
        event = reload(session, event)
        # Logged, counted, and nothing else: still pending, still theirs.
        assert (event.status, event.attempts, event.lease_token, event.delivered_at) == (
            "pending",
            1,
            theirs.lease_token,
            None,
        )

        assert record_outcome(session, theirs, Outcome(500, "HTTP 500", 8.0), settings=settings)
        session.commit()
        event = reload(session, event)
        assert (event.status, event.attempts, event.lease_token, event.lease_expires_at) == ("pending", 2, None, None)
        assert deliveries(session, event) == [(1, 200), (2, 500)]

    def test_stopping_lets_attempts_in_flight_finish(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        database_url: str,
        redis_url: str,
        receiver: Receiver,
    ) -> None:
        settings = lease_settings(database_url, redis_url, timeout=3.0)
        receiver.delays["/slow"] = 1.0
        event = one_event(session, receiver.url("/slow"))
        sender = WebhookSender(session_factory, settings=settings, idle_seconds=0.05)
        sender.start()
        wait_for(lambda: receiver.calls_to("/slow"))
        sender.stop()
        assert sender.in_flight() == 0
        event = reload(session, event)
        assert (event.status, event.lease_token) == ("delivered", None)
