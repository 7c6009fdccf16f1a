"""Plain helpers shared by the webhook tests (URL checks, delivery, fairness, the secret endpoints): loopback
receivers, a black hole, failed jobs with pending events. No fixtures live here."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer as _ThreadingHTTPServer
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from facemint.jobs.orm import Job
from facemint.tenants.orm import Tenant
from facemint.webhooks import service as webhooks
from facemint.webhooks.orm import WebhookEvent
from tests.factories import create_user, fund

PUBLIC_IP = "93.184.215.14"


class QuietHTTPServer(_ThreadingHTTPServer):
    """A test receiver: the sender hanging up on a slow answer (which some tests cause on purpose) is expected,
    not a traceback for the test output."""

    daemon_threads = True

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


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when the request arrived (wall clock, as the database's)


@dataclass
class Receiver:
    """A loopback HTTP server. `plan[path]` lists the statuses to answer, in order (then 200); `delays[path]`
    how long to think before answering. `/redirect` redirects, `/drip` sends its status line a byte at a time."""

    port: int
    calls: list[Call] = field(default_factory=list)
    plan: dict[str, list[int]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=lambda: {"/slow": 3.0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def calls_to(self, path: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.path == path]


@contextlib.contextmanager
def serve_receiver() -> Iterator[Receiver]:
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
                delay = rec.delays.get(self.path, 0.0)
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
            if delay:
                time.sleep(delay)
            self.send_response(302 if self.path == "/redirect" else status)
            if self.path == "/redirect":
                self.send_header("Location", rec.url("/target"))
            self.send_header("Content-Length", "2")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"ok")

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = Receiver(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["receiver"]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class BlackHole:
    """Accepts TCP connections, reads whatever comes and never answers: an endpoint that swallows packets."""

    port: int
    accepted: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def serve_black_hole() -> Iterator[BlackHole]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    hole = BlackHole(port=listener.getsockname()[1])
    stopping = threading.Event()
    connections: list[socket.socket] = []

    def swallow(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            hole.accepted += 1
            connections.append(conn)
            threading.Thread(target=swallow, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield hole
    finally:
        stopping.set()
        listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.close()


def make_failed_job(session: Session, *, tenant: Tenant | None = None, webhook_url: str | None = None) -> Job:
    """A failed job (its hold released), committed: what webhook events hang off."""
    user = create_user(session, tenant=tenant)
    fund(session, account_id=user.account_id, amount=10)
    public_id = f"job_{uuid.uuid4().hex[:24]}"
    hold = ledger_holds.reserve(session, account_id=user.account_id, amount=1, reference=public_id, ttl_seconds=600)
    ledger_holds.release(session, hold_id=hold.hold_id)
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
        webhook_url=webhook_url,
        error_code="test_failure",
        max_attempts=3,
        deadline_at=func.now() + timedelta(hours=1),
        finished_at=func.now(),
    )
    session.add(job)
    session.commit()
    return job


def queue_events(session: Session, job: Job, *, url: str, count: int = 1) -> list[WebhookEvent]:
    """`count` pending `job.failed` events of `job` to `url`, due now and committed."""
    payload = {"type": "job.failed", "data": {"id": job.public_id, "status": "failed", "error": "test_failure"}}
    for _ in range(count):
        webhooks.record_event(
            session, job_id=job.id, tenant_id=job.tenant_id, url=url, event_type="job.failed", payload=payload
        )
    session.commit()
    return list(
        session.scalars(
            select(WebhookEvent).where(WebhookEvent.job_id == job.id, WebhookEvent.url == url).order_by(WebhookEvent.id)
        )
    )


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


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy (its value is returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
