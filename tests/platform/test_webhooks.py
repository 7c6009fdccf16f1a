"""Webhooks: URL checks against server-side request forgery, Standard Webhooks signing, and delivery to a real
loopback receiver (retries, redirects not followed, attempt budget, one sender per event, pinned addresses,
one deadline per attempt), plus the tenant secret's admin endpoints."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer as _ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import service as ledger
from facemint.audit.orm import AuditEvent
from facemint.config import Settings
from facemint.jobs.orm import Job
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from facemint.webhooks import service as webhooks
from facemint.webhooks.errors import InvalidWebhookUrl
from facemint.webhooks.orm import WebhookDelivery, WebhookEvent
from facemint.webhooks.transport import PinnedTransport
from tests.conftest import make_settings
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import MakeCaller

PUBLIC_IP = "93.184.215.14"


class QuietHTTPServer(_ThreadingHTTPServer):
    """A test receiver: the sender hanging up on a slow answer (which some tests cause on purpose) is expected,
    not a traceback for the test output."""

    def handle_error(self, request: object, client_address: object) -> None:
        return None


def resolver(mapping: dict[str, list[str]]) -> webhooks.Resolver:
    """A stand-in for socket.getaddrinfo: names resolve to `mapping[name]`; anything else does not resolve."""

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in mapping[host]
        ]

    return resolve


# --- URL checks ----------------------------------------------------------------------------------------------


class TestValidateWebhookUrl:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1/hook",
            "http://localhost.test/hook",  # resolves to loopback (fake resolver below)
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://[fd00:ec2::254]/",
            "http://10.0.0.5/",
            "http://172.16.3.4/",
            "http://192.168.1.10/",
            "http://100.64.0.1/",  # shared address space (carrier-grade NAT)
            "http://224.0.0.1/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://240.0.0.1/",
            "http://[fe80::1]/",
            "http://2130706433/",  # 127.0.0.1 in decimal
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a00:5]/",  # NAT64 of 10.0.0.5
            "http://[2002:c0a8:10a::]/",  # 6to4 of 192.168.1.10
            "http://256.1.1.1/",
            "file:///etc/passwd",
            "ftp://example.com/",
            "gopher://example.com/",
            "javascript:alert(1)",
            "http://user:pass@example.com/",
            "http://user@example.com/",
            "http://example.com\\@127.0.0.1/",
            "http:///path-only",
            "http://",
            "http://exa mple.com/",
            "http://example.com:0/",
            "http://example.com:70000/",
            "http://127.0.0.%31/",
            "http://unresolvable.test/",
            "http://mixed.test/",  # one public address and one private one
            "https://example.com/" + "a" * 2048,
        ],
    )
    def test_refused(self, url: str) -> None:
        resolve = resolver(
            {"example.com": [PUBLIC_IP], "localhost.test": ["127.0.0.1"], "mixed.test": [PUBLIC_IP, "10.1.2.3"]}
        )
        with pytest.raises(InvalidWebhookUrl) as info:
            webhooks.validate_webhook_url(url, allowed_networks=[], resolve=resolve)
        assert info.value.status_code == 422
        assert info.value.code == "invalid_webhook_url"

    def test_public_hosts_are_accepted_and_normalized(self) -> None:
        resolve = resolver({"hooks.example.com": [PUBLIC_IP, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})
        check = webhooks.validate_webhook_url
        assert check("HTTPS://Hooks.Example.COM:443/in?x=1#frag", allowed_networks=[], resolve=resolve) == (
            "https://hooks.example.com/in?x=1"
        )
        assert check("http://hooks.example.com:8080", allowed_networks=[], resolve=resolve) == (
            "http://hooks.example.com:8080/"
        )
        assert check(f"http://{PUBLIC_IP}/x", allowed_networks=[]) == f"http://{PUBLIC_IP}/x"

    def test_allowed_networks_admit_loopback(self) -> None:
        with pytest.raises(InvalidWebhookUrl):
            webhooks.validate_webhook_url("http://127.0.0.1:9000/hook", allowed_networks=[])
        allowed = ["127.0.0.0/8"]
        assert webhooks.validate_webhook_url("http://127.0.0.1:9000/hook", allowed_networks=allowed) == (
            "http://127.0.0.1:9000/hook"
        )
        # The odd spellings are read as the address they mean, so they are allowed or refused like it.
        assert webhooks.validate_webhook_url("http://2130706433/", allowed_networks=allowed) == "http://127.0.0.1/"
        assert webhooks.validate_webhook_url("http://[::ffff:127.0.0.1]/", allowed_networks=allowed)
        resolve = resolver({"receiver.test": ["127.0.0.1"]})
        assert webhooks.validate_webhook_url("http://receiver.test/", allowed_networks=allowed, resolve=resolve)
        # Loopback being allowed admits nothing else.
        with pytest.raises(InvalidWebhookUrl):
            webhooks.validate_webhook_url("http://10.0.0.1/", allowed_networks=allowed)

    def test_metadata_services_are_refused_even_inside_allowed_networks(self) -> None:
        for url in ("http://169.254.169.254/", "http://metadata.google.internal/", "http://[fd00:ec2::254]/"):
            with pytest.raises(InvalidWebhookUrl):
                webhooks.validate_webhook_url(
                    url,
                    allowed_networks=["169.254.0.0/16", "fd00::/8"],
                    resolve=resolver({"metadata.google.internal": ["169.254.169.254"]}),
                )

    def test_real_resolver_refuses_localhost(self) -> None:
        with pytest.raises(InvalidWebhookUrl):
            webhooks.validate_webhook_url("http://localhost/", allowed_networks=[])


# --- Signing -------------------------------------------------------------------------------------------------


class TestSigning:
    # The reference vector from the Standard Webhooks specification.
    SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    TIMESTAMP = 1614265330
    BODY = b'{"test": 2432232314}'
    SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    def headers(self, signature: str | None = None, timestamp: int | None = None) -> dict[str, str]:
        return {
            "Webhook-Id": self.MSG_ID,
            "Webhook-Timestamp": str(timestamp or self.TIMESTAMP),
            "Webhook-Signature": signature or self.SIGNATURE,
        }

    def test_matches_the_specification_vector(self) -> None:
        assert webhooks.sign(self.SECRET, msg_id=self.MSG_ID, timestamp=self.TIMESTAMP, body=self.BODY) == (
            self.SIGNATURE
        )
        assert webhooks.verify(self.SECRET, self.headers(), self.BODY, now=self.TIMESTAMP)

    def test_rejects_tampering_staleness_and_other_secrets(self) -> None:
        now = self.TIMESTAMP
        assert not webhooks.verify(self.SECRET, self.headers(), b'{"test": 2432232315}', now=now)
        assert not webhooks.verify(self.SECRET, self.headers(), self.BODY, now=now + 301)
        assert not webhooks.verify(self.SECRET, self.headers(), self.BODY, now=now - 301)
        assert webhooks.verify(self.SECRET, self.headers(), self.BODY, now=now + 299)
        # A fresh timestamp does not help a signature made for the old one.
        assert not webhooks.verify(self.SECRET, self.headers(timestamp=now + 100), self.BODY, now=now + 100)
        assert not webhooks.verify(webhooks.new_secret(), self.headers(), self.BODY, now=now)
        assert not webhooks.verify(self.SECRET, {**self.headers(), "Webhook-Id": "msg_other"}, self.BODY, now=now)
        assert not webhooks.verify(self.SECRET, {"webhook-id": self.MSG_ID}, self.BODY, now=now)
        assert not webhooks.verify(self.SECRET, self.headers(timestamp=0) | {"webhook-timestamp": "x"}, self.BODY)
        assert not webhooks.verify(self.SECRET, self.headers(signature="v1,"), self.BODY, now=now)

    def test_any_of_several_signatures_may_match(self) -> None:
        other = webhooks.sign(webhooks.new_secret(), msg_id=self.MSG_ID, timestamp=self.TIMESTAMP, body=self.BODY)
        both = f"{other} {self.SIGNATURE}"
        assert webhooks.verify(self.SECRET, self.headers(signature=both), self.BODY, now=self.TIMESTAMP)
        assert not webhooks.verify(self.SECRET, self.headers(signature=other), self.BODY, now=self.TIMESTAMP)

    def test_new_secrets_are_32_random_bytes(self) -> None:
        secret = webhooks.new_secret()
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
        assert secret != webhooks.new_secret()


# --- Delivery ------------------------------------------------------------------------------------------------


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP server. `plan[path]` lists the statuses to answer, in order (then 200)."""

    port: int
    calls: list[Call] = field(default_factory=list)
    plan: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def calls_to(self, path: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            rec = state["receiver"]
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with rec.lock:
                rec.calls.append(Call(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                planned = rec.plan.get(self.path) or []
                status = planned.pop(0) if planned else 200
            if self.path == "/drip":
                # One byte of the status line at a time: each read is quick, the whole never finishes.
                try:
                    for byte in b"HTTP/1.1 200 OK\r\n":
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass
                self.close_connection = True
                return
            if self.path == "/slow":
                time.sleep(3)
            self.send_response(302 if self.path == "/redirect" else status)
            if self.path == "/redirect":
                self.send_header("Location", rec.url("/target"))
            self.send_header("Content-Length", "2")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"ok")

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["receiver"] = Receiver(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["receiver"]
    server.shutdown()
    server.server_close()


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
        user = create_user(session, tenant=tenant)
        fund(session, account_id=user.account_id, amount=10)
        public_id = f"job_{uuid.uuid4().hex[:24]}"
        hold = ledger.reserve(session, account_id=user.account_id, amount=1, reference=public_id, ttl_seconds=600)
        ledger.release(session, hold_id=hold.hold_id)
        assert user.tenant_id is not None
        job = Job(
            public_id=public_id,
            tenant_id=user.tenant_id,
            user_id=user.id,
            account_id=user.account_id,
            hold_id=hold.hold_id,
            operation="swap.image",
            queue="swaps",
            status="failed",
            idempotency_key=public_id,
            request_hash=b"test",
            price_version=1,
            tokens_per_unit=1,
            units=1,
            tokens_held=1,
            options={},
            input_location="test://input",
            webhook_url=url,
            error_code="test_failure",
            max_attempts=3,
            deadline_at=func.now() + timedelta(hours=1),
            finished_at=func.now(),
        )
        session.add(job)
        session.flush()
        payload = {"type": "job.failed", "data": {"id": public_id, "status": "failed", "error": "test_failure"}}
        webhooks.record_event(
            session, job_id=job.id, tenant_id=user.tenant_id, url=url, event_type="job.failed", payload=payload
        )
        session.commit()
        event = session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job.id)).one()
        return event

    return make


def make_due(session: Session) -> None:
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.status == "pending")
        .values(next_attempt_at=func.now() - timedelta(seconds=1))
    )
    session.commit()


def reload(session: Session, event: WebhookEvent) -> WebhookEvent:
    session.expire_all()
    fresh = session.get(WebhookEvent, event.id)
    assert fresh is not None
    return fresh


def tenant_secret(session: Session, tenant_id: int) -> str:
    return session.scalars(select(Tenant.webhook_secret).where(Tenant.id == tenant_id)).one()


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

        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 1

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
        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 0

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

        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 1
        event = reload(session, event)
        assert event.status == "pending"
        assert event.attempts == 1
        wait = session.scalar(select(func.extract("epoch", WebhookEvent.next_attempt_at - func.now())))
        assert wait is not None
        assert 25 < float(wait) <= 31  # the first backoff step, 30 s
        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 0

        make_due(session)
        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 1
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
        steps = [webhooks.backoff_seconds(wh_settings, attempts=n) for n in (1, 2, 3, 7)]
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
        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 1
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
            assert webhooks.deliver_due(session_factory, settings=wh_settings) == 1
        event = reload(session, event)
        assert event.status == "failed"
        assert event.attempts == 3
        assert event.delivered_at is None
        make_due(session)
        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 0
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
        assert webhooks.deliver_due(session_factory, settings=wh_settings, resolve=resolve) == 1
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
            assert webhooks.deliver_due(session_factory, settings=wh_settings, resolve=resolve) == 1
        make_due(session)
        assert webhooks.deliver_due(session_factory, settings=wh_settings, resolve=resolver({})) == 1
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
        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 1
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
        assert webhooks.deliver_due(session_factory, settings=wh_settings) == 1
        assert time.monotonic() - started < wh_settings.webhook_timeout_seconds + 1
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
        attempts: list[int] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def sender() -> None:
            try:
                barrier.wait()
                while made := webhooks.deliver_due(session_factory, settings=wh_settings, limit=2):
                    attempts.append(made)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sender) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors
        assert sum(attempts) == 12
        sent = [call.headers["webhook-id"] for call in receiver.calls_to("/ok")]
        assert sorted(sent) == sorted(event.public_id for event in events)
        statuses = session.execute(text("SELECT status, count(*) FROM webhook_events GROUP BY status")).all()
        assert [tuple(row) for row in statuses] == [("delivered", 12)]
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 12

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
        webhooks.deliver_due(session_factory, settings=wh_settings)
        old = tenant_secret(session, event.tenant_id)
        session.execute(update(Tenant).where(Tenant.id == event.tenant_id).values(webhook_secret=webhooks.new_secret()))
        session.commit()
        make_due(session)
        webhooks.deliver_due(session_factory, settings=wh_settings)
        first, second = receiver.calls_to("/flaky")
        new = tenant_secret(session, event.tenant_id)
        assert webhooks.verify(old, first.headers, first.body)
        assert not webhooks.verify(new, first.headers, first.body)
        assert webhooks.verify(new, second.headers, second.body)
        assert not webhooks.verify(old, second.headers, second.body)


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


# --- The tenant's secret over the admin API -------------------------------------------------------------------


class TestSecretEndpoints:
    def test_tenant_admins_read_their_own_secret_only(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant, other = create_tenant(session), create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/webhook-secret", headers=admin.headers)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        secret = response.json()["secret"]
        assert secret == tenant_secret(session, tenant.id)
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32

        response = client.get(f"/admin/v1/tenants/{other.id}/webhook-secret", headers=admin.headers)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"
        assert tenant_secret(session, other.id) not in response.text

        member = make_caller(Role.member, tenant)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/webhook-secret", headers=member.headers)
        assert response.status_code == 403
        assert response.json()["code"] == "insufficient_scope"

    def test_operators_read_any_tenants_secret_and_finance_none(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        operator = make_caller(Role.operator)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/webhook-secret", headers=operator.headers)
        assert response.status_code == 200
        assert response.json()["secret"] == tenant_secret(session, tenant.id)
        response = client.get("/admin/v1/tenants/999999/webhook-secret", headers=operator.headers)
        assert response.status_code == 404
        # Finance reads everything else, but a signing secret would let it forge webhooks.
        finance = make_caller(Role.finance)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/webhook-secret", headers=finance.headers)
        assert response.status_code == 403
        assert tenant_secret(session, tenant.id) not in response.text

    def test_rotation_replaces_the_secret_and_is_audited(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        before = tenant_secret(session, tenant.id)
        admin = make_caller(Role.platform_admin)
        response = client.post(f"/admin/v1/tenants/{tenant.id}/webhook-secret/rotate", headers=admin.headers)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        rotated = response.json()["secret"]
        assert rotated != before
        assert rotated == tenant_secret(session, tenant.id)
        assert len(base64.b64decode(rotated.removeprefix("whsec_"), validate=True)) == 32

        session.expire_all()
        [audit] = session.scalars(select(AuditEvent).where(AuditEvent.action == "tenant.webhook_secret.rotate")).all()
        assert (audit.tenant_id, audit.target_type, audit.target_id) == (tenant.id, "tenant", str(tenant.id))
        assert audit.actor_user_id == admin.id
        trail = json.dumps([audit.before, audit.after])
        assert before not in trail
        assert rotated not in trail
        assert audit.before != audit.after

        response = client.post("/admin/v1/tenants/999999/webhook-secret/rotate", headers=admin.headers)
        assert response.status_code == 404

    def test_rotation_needs_webhooks_write(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        tenant, other = create_tenant(session), create_tenant(session)
        before = tenant_secret(session, tenant.id)
        member = make_caller(Role.member, tenant)
        response = client.post(f"/admin/v1/tenants/{tenant.id}/webhook-secret/rotate", headers=member.headers)
        assert response.status_code == 403, response.text
        # A tenant admin rotates its own tenant's secret, and another tenant's answers 404.
        admin = make_caller(Role.tenant_admin, tenant)
        response = client.post(f"/admin/v1/tenants/{other.id}/webhook-secret/rotate", headers=admin.headers)
        assert response.status_code == 404, response.text
        response = client.post(f"/admin/v1/tenants/{tenant.id}/webhook-secret/rotate", headers=admin.headers)
        assert response.status_code == 200, response.text
        rotated = tenant_secret(session, tenant.id)
        assert rotated != before
        assert response.json()["secret"] == rotated
        before = rotated
        finance = make_caller(Role.finance)
        response = client.post(f"/admin/v1/tenants/{tenant.id}/webhook-secret/rotate", headers=finance.headers)
        assert response.status_code == 403
        assert tenant_secret(session, tenant.id) == before
