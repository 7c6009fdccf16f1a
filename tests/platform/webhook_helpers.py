"""Plain helpers shared by the webhook tests (URL checks, delivery, the secret endpoints). No fixtures live here."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import ThreadingHTTPServer as _ThreadingHTTPServer
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from facemint.tenants.orm import Tenant
from facemint.webhooks import service as webhooks
from facemint.webhooks.orm import WebhookEvent

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
