"""Webhook delivery to a real loopback receiver: retries, redirects not followed, attempt budget, one sender per
event, pinned addresses, one deadline per attempt, and HTTPS pinned to the address but checked against the name."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from facemint.config import Settings
from facemint.tenants.orm import Tenant, new_webhook_secret
from facemint.webhooks import sender
from facemint.webhooks import service as webhooks
from facemint.webhooks.orm import WebhookDelivery, WebhookEvent
from facemint.webhooks.sender import WebhookSender
from facemint.webhooks.transport import PinnedTransport
from tests.conftest import make_settings
from tests.factories import create_tenant
from tests.platform.webhook_helpers import (
    PUBLIC_IP,
    QuietHTTPServer,
    Receiver,
    make_due,
    make_failed_job,
    queue_events,
    reload,
    resolver,
    serve_receiver,
    tenant_secret,
    wait_for,
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as rec:
        yield rec


@pytest.fixture
def wh_settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        webhook_allowed_networks=["127.0.0.0/8"],
        webhook_timeout_seconds=1.0,
        webhook_max_attempts=3,
        webhook_backoff_seconds=[30, 60],
    )


MakeEvent = Callable[..., WebhookEvent]


@pytest.fixture
def make_event(session: Session) -> MakeEvent:
    """`make_event(url, tenant=None)`: a failed job (its hold released) and its pending `job.failed` event."""

    def make(url: str, tenant: Tenant | None = None) -> WebhookEvent:
        job = make_failed_job(session, tenant=tenant, webhook_url=url)
        [event] = queue_events(session, job, url=url)
        return event

    return make


class TestDelivery:
    def test_delivers_signed_and_logs_the_attempt(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        event = make_event(receiver.url("/ok"))
        assert event.public_id.startswith("msg_")
        assert len(event.public_id) == 28
        assert event.status == "pending"
        assert event.attempts == 0

        assert sender.deliver_due(session_factory, settings=wh_settings) == 1

        [call] = receiver.calls_to("/ok")
        assert call.headers["webhook-id"] == event.public_id
        assert call.headers["user-agent"] == "Facemint-Webhooks/1"
        assert call.headers["content-type"] == "application/json"
        assert call.body == webhooks.encode_body(event.payload)
        assert json.loads(call.body) == event.payload
        assert abs(int(call.headers["webhook-timestamp"]) - time.time()) < 10
        secret = tenant_secret(session, event.tenant_id)
        assert webhooks.verify(secret, call.headers, call.body)
        assert not webhooks.verify(secret, call.headers, call.body + b" ")

        event = reload(session, event)
        assert event.status == "delivered"
        assert event.attempts == 1
        assert event.delivered_at is not None
        [listed] = webhooks.list_deliveries(session, job_id=event.job_id)
        assert listed.id == event.public_id
        assert listed.status == "delivered"
        assert listed.event_type == "job.failed"
        assert listed.next_attempt_at is None
        [attempt] = listed.deliveries
        assert (attempt.attempt, attempt.response_status, attempt.error) == (1, 200, None)
        assert attempt.duration_ms is not None
        assert attempt.duration_ms >= 0
        # Nothing is due any more.
        assert sender.deliver_due(session_factory, settings=wh_settings) == 0

    def test_retries_with_backoff_then_succeeds(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        receiver.plan["/flaky"] = [500]
        event = make_event(receiver.url("/flaky"))

        assert sender.deliver_due(session_factory, settings=wh_settings) == 1
        event = reload(session, event)
        assert event.status == "pending"
        assert event.attempts == 1
        wait = session.scalar(select(func.extract("epoch", WebhookEvent.next_attempt_at - func.now())))
        assert wait is not None
        assert 25 < float(wait) <= 31  # the first backoff step, 30 s
        assert sender.deliver_due(session_factory, settings=wh_settings) == 0

        make_due(session)
        assert sender.deliver_due(session_factory, settings=wh_settings) == 1
        event = reload(session, event)
        assert event.status == "delivered"
        assert event.attempts == 2
        calls = receiver.calls_to("/flaky")
        assert len(calls) == 2
        # Same message id on every attempt (receivers deduplicate on it); each attempt signed afresh.
        assert {call.headers["webhook-id"] for call in calls} == {event.public_id}
        secret = tenant_secret(session, event.tenant_id)
        assert all(webhooks.verify(secret, call.headers, call.body) for call in calls)
        [listed] = webhooks.list_deliveries(session, job_id=event.job_id)
        assert [(d.attempt, d.response_status, d.error) for d in listed.deliveries] == [
            (1, 500, "HTTP 500"),
            (2, 200, None),
        ]

    def test_backoff_schedule_repeats_its_last_step(self, wh_settings: Settings) -> None:
        steps = [sender.backoff_seconds(wh_settings, attempts=n) for n in (1, 2, 3, 7)]
        assert steps == [30, 60, 60, 60]

    def test_redirects_are_not_followed(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        event = make_event(receiver.url("/redirect"))
        assert sender.deliver_due(session_factory, settings=wh_settings) == 1
        assert len(receiver.calls_to("/redirect")) == 1
        assert receiver.calls_to("/target") == []
        event = reload(session, event)
        assert event.status == "pending"
        assert event.attempts == 1
        [attempt] = session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)).all()
        assert attempt.response_status == 302
        assert attempt.error is not None
        assert "redirect" in attempt.error

    def test_gives_up_after_max_attempts(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        receiver.plan["/down"] = [503] * 10
        event = make_event(receiver.url("/down"))
        for _ in range(wh_settings.webhook_max_attempts):
            make_due(session)
            assert sender.deliver_due(session_factory, settings=wh_settings) == 1
        event = reload(session, event)
        assert event.status == "failed"
        assert event.attempts == 3
        assert event.delivered_at is None
        make_due(session)
        assert sender.deliver_due(session_factory, settings=wh_settings) == 0
        assert len(receiver.calls_to("/down")) == 3
        [listed] = webhooks.list_deliveries(session, job_id=event.job_id)
        assert listed.status == "failed"
        assert listed.next_attempt_at is None
        assert [d.response_status for d in listed.deliveries] == [503, 503, 503]

    def test_connects_to_the_checked_address_with_the_original_host(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        # `receiver.test` exists only in this resolver; reaching the receiver proves the socket went to the
        # address it returned, while the request still names the host.
        event = make_event(receiver.url("/ok", host="receiver.test"))
        resolve = resolver({"receiver.test": ["127.0.0.1"]})
        assert sender.deliver_due(session_factory, settings=wh_settings, resolve=resolve) == 1
        [call] = receiver.calls_to("/ok")
        assert call.headers["host"] == f"receiver.test:{receiver.port}"
        assert reload(session, event).status == "delivered"

    def test_rebinding_to_a_private_address_is_refused_at_send_time(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        event = make_event("http://rebind.test/ok")
        for addresses in (["10.0.0.7"], [PUBLIC_IP, "169.254.169.254"]):
            make_due(session)
            resolve = resolver({"rebind.test": addresses})
            assert sender.deliver_due(session_factory, settings=wh_settings, resolve=resolve) == 1
        make_due(session)
        assert sender.deliver_due(session_factory, settings=wh_settings, resolve=resolver({})) == 1
        event = reload(session, event)
        assert event.status == "failed"
        assert event.attempts == 3
        errors = [d.error or "" for d in webhooks.list_deliveries(session, job_id=event.job_id)[0].deliveries]
        assert all(error.startswith("refused:") for error in errors), errors
        assert "not a public address" in errors[0]
        assert "10.0.0.7" not in errors[0]  # how the server resolves names is not shown to the caller
        assert "metadata" in errors[1]
        assert "cannot be resolved" in errors[2]
        assert receiver.calls == []

    def test_network_failures_are_failed_attempts(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        make_event: MakeEvent,
    ) -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        event = make_event(f"http://127.0.0.1:{port}/nobody-listens")
        assert sender.deliver_due(session_factory, settings=wh_settings) == 1
        event = reload(session, event)
        assert event.status == "pending"
        assert event.attempts == 1
        [attempt] = webhooks.list_deliveries(session, job_id=event.job_id)[0].deliveries
        assert attempt.response_status is None
        assert attempt.error
        assert attempt.error.startswith("ConnectError")

    @pytest.mark.parametrize("path", ["/slow", "/drip"])
    def test_one_deadline_bounds_the_whole_attempt(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
        path: str,
    ) -> None:
        event = make_event(receiver.url(path))
        started = time.monotonic()
        assert sender.deliver_due(session_factory, settings=wh_settings) == 1
        assert time.monotonic() - started < wh_settings.webhook_timeout_seconds + 1
        [attempt] = webhooks.list_deliveries(session, job_id=event.job_id)[0].deliveries
        assert attempt.response_status is None
        assert attempt.error
        assert "Timeout" in attempt.error

    def test_a_hanging_resolver_fails_the_attempt_at_its_deadline(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        make_event: MakeEvent,
    ) -> None:
        released = threading.Event()

        def hanging(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            released.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

        event = make_event("http://slow-dns.test/hook")
        started = time.monotonic()
        try:
            assert sender.deliver_due(session_factory, settings=wh_settings, resolve=hanging) == 1
            elapsed = time.monotonic() - started
        finally:
            released.set()
        timeout = wh_settings.webhook_timeout_seconds
        assert timeout * 0.9 < elapsed < timeout + 1
        event = reload(session, event)
        assert (event.status, event.attempts) == ("pending", 1)  # a failed attempt, retried with backoff
        [attempt] = webhooks.list_deliveries(session, job_id=event.job_id)[0].deliveries
        assert attempt.response_status is None
        assert attempt.error
        assert attempt.error.startswith("ResolveTimeout")

    def test_the_lookup_counts_against_the_deadline(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        # 0.6 s to resolve and 0.6 s to answer: each within the 1 s deadline, together past it.
        receiver.delays["/think"] = 0.6
        fast = resolver({"receiver.test": ["127.0.0.1"]})

        def slow(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.6)
            return fast(host, port, *args, **kwargs)

        event = make_event(receiver.url("/think", host="receiver.test"))
        assert sender.deliver_due(session_factory, settings=wh_settings, resolve=slow) == 1
        assert len(receiver.calls_to("/think")) == 1
        [attempt] = webhooks.list_deliveries(session, job_id=event.job_id)[0].deliveries
        assert attempt.response_status is None
        assert attempt.error
        assert "Timeout" in attempt.error

    def test_concurrent_senders_send_each_event_once(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        tenant = create_tenant(session)
        events = [make_event(receiver.url("/ok"), tenant) for _ in range(12)]
        senders = [
            WebhookSender(session_factory, settings=wh_settings, concurrency=3, idle_seconds=0.05) for _ in range(2)
        ]
        for each in senders:
            each.start()
        try:
            wait_for(lambda: len(receiver.calls_to("/ok")) >= 12 and not any(s.in_flight() for s in senders))
        finally:
            for each in senders:
                each.stop()
        sent = [call.headers["webhook-id"] for call in receiver.calls_to("/ok")]
        assert sorted(sent) == sorted(event.public_id for event in events)
        statuses = session.execute(text("SELECT status, count(*) FROM webhook_events GROUP BY status")).all()
        assert [tuple(row) for row in statuses] == [("delivered", 12)]
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 12
        leases = session.execute(text("SELECT count(*) FROM webhook_events WHERE lease_token IS NOT NULL")).scalar()
        assert leases == 0  # recording an outcome clears its lease

    def test_a_rotated_secret_signs_the_next_attempt(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
    ) -> None:
        receiver.plan["/flaky"] = [500]
        event = make_event(receiver.url("/flaky"))
        sender.deliver_due(session_factory, settings=wh_settings)
        old = tenant_secret(session, event.tenant_id)
        session.execute(update(Tenant).where(Tenant.id == event.tenant_id).values(webhook_secret=new_webhook_secret()))
        session.commit()
        make_due(session)
        sender.deliver_due(session_factory, settings=wh_settings)
        first, second = receiver.calls_to("/flaky")
        new = tenant_secret(session, event.tenant_id)
        assert webhooks.verify(old, first.headers, first.body)
        assert not webhooks.verify(new, first.headers, first.body)
        assert webhooks.verify(new, second.headers, second.body)
        assert not webhooks.verify(old, second.headers, second.body)

    def test_an_attempt_that_outlives_its_claim_is_only_logged(
        self,
        session: Session,
        session_factory: sessionmaker[Session],
        wh_settings: Settings,
        receiver: Receiver,
        make_event: MakeEvent,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Another sender settles the event while this one's last failing attempt is in flight: the failure is
        # logged, and the event stays delivered instead of being given up as failed.
        receiver.plan["/late"] = [500] * 3
        event = make_event(receiver.url("/late"))
        for _ in range(wh_settings.webhook_max_attempts - 1):
            make_due(session)
            assert sender.deliver_due(session_factory, settings=wh_settings) == 1
        make_due(session)
        send = sender.send_attempt

        def send_then_settled_elsewhere(claimed: Any, **kwargs: Any) -> Any:
            outcome = send(claimed, **kwargs)
            with session_factory() as other, other.begin():
                other.execute(
                    update(WebhookEvent)
                    .where(WebhookEvent.id == claimed.id)
                    .values(status="delivered", delivered_at=func.now())
                )
            return outcome

        monkeypatch.setattr(sender, "send_attempt", send_then_settled_elsewhere)
        assert sender.deliver_due(session_factory, settings=wh_settings) == 1
        event = reload(session, event)
        assert event.status == "delivered"
        assert event.attempts == 3
        [listed] = webhooks.list_deliveries(session, job_id=event.job_id)
        assert listed.next_attempt_at is None
        assert [(d.attempt, d.response_status) for d in listed.deliveries] == [(1, 500), (2, 500), (3, 500)]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_pins_the_address_but_keeps_the_name_for_sni_and_the_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key)]
        + ["-out", str(cert), "-subj", "/CN=receiver.test", "-addext", "subjectAltName=DNS:receiver.test"],
        check=True,
        capture_output=True,
    )
    seen: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            seen["host"] = self.headers["host"]
            self.send_response(204)
            self.end_headers()

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    def remember_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        seen["sni"] = name or ""

    server_context.sni_callback = remember_sni
    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    client_context = ssl.create_default_context(cafile=str(cert))
    try:
        for host, expected in (("receiver.test", 204), ("other.test", None)):
            transport = PinnedTransport(
                addresses=["127.0.0.1"], deadline=time.monotonic() + 5, ssl_context=client_context
            )
            with httpx.Client(transport=transport, follow_redirects=False) as client:
                if expected is None:
                    # The certificate is checked against the name in the URL, not the pinned address.
                    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                        client.post(f"https://{host}:{port}/hook", content=b"{}")
                else:
                    assert client.post(f"https://{host}:{port}/hook", content=b"{}").status_code == expected
                    assert seen == {"sni": host, "host": f"{host}:{port}"}
    finally:
        server.shutdown()
        server.server_close()
