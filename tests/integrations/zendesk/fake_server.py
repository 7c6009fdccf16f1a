"""A stand-in for a tenant's Zendesk, on loopback: the stdlib's HTTP server in a thread, implementing what the
reply uses (`POST /api/v2/uploads`, `PUT /api/v2/tickets/{id}`, `GET /api/v2/tickets/{id}/comments`), checking
HTTP Basic auth as Zendesk does (`{email}/token:{api token}`), recording what it received, and answering 500 or
429 (with Retry-After) a given number of times when told to. It also makes webhooks signed as Zendesk signs them.
Shared by the tests of tests/integrations/zendesk."""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from facemint.integrations.zendesk import signature

EMAIL = "agent@acme.example.test"
API_TOKEN = "zd-api-token-0123456789abcdefghij"
SIGNING_SECRET = "zd-signing-secret-AbCdEf0123456789"
_TICKET = re.compile(r"^/api/v2/tickets/(\d+)$")
_COMMENTS = re.compile(r"^/api/v2/tickets/(\d+)/comments$")


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeZendesk:
    email: str = EMAIL
    api_token: str = API_TOKEN
    signing_secret: str = SIGNING_SECRET
    base_url: str = ""
    received: list[Received] = field(default_factory=list)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> {filename, content_type, data, id}
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # ticket id -> comments
    # (method, path kind) -> answers still to give instead of the real one: (status, Retry-After or None)
    _failures: dict[tuple[str, str], list[tuple[int, str | None]]] = field(default_factory=dict)
    # Answer the PUT (after applying it) with this status a number of times: a comment whose success is lost.
    _lost_replies: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(9001))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what tests set and read

    def fail(self, method: str, kind: str, status: int, *, times: int = 1, retry_after: str | None = None) -> None:
        """The next `times` requests of `kind` ("uploads", "ticket", "comments") answer `status`."""
        with self._lock:
            self._failures.setdefault((method, kind), []).extend([(status, retry_after)] * times)

    def lose_replies(self, times: int = 1) -> None:
        """The next `times` comments are added, then answered 500 (as if the answer never arrived)."""
        with self._lock:
            self._lost_replies += times

    def requests(self, method: str, kind: str) -> list[Received]:
        return [r for r in self.received if r.method == method and _kind(r.path) == kind]

    def replies(self, ticket_id: int) -> list[dict[str, Any]]:
        """The comments added to a ticket (each with its attachments)."""
        return list(self.comments.get(ticket_id, []))

    # --- webhooks, signed as Zendesk signs them

    def webhook(
        self,
        ticket_id: int,
        *,
        subject: str = "Hello",
        tags: list[str] | None = None,
        group_id: int | None = None,
        timestamp: str | None = None,
        secret: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A trigger's webhook for a new ticket (the JSON body docs/integrations.md documents) and its headers."""
        body = json.dumps(
            {
                "ticket": {
                    "id": str(ticket_id),
                    "subject": subject,
                    "tags": " ".join(tags or []),
                    "group_id": "" if group_id is None else str(group_id),
                }
            }
        ).encode()
        return body, self.sign(body, timestamp=timestamp, secret=secret)

    def sign(self, body: bytes, *, timestamp: str | None = None, secret: str | None = None) -> dict[str, str]:
        stamp = timestamp or signature.timestamp_now()
        return {
            "Content-Type": "application/json",
            signature.TIMESTAMP_HEADER: stamp,
            signature.SIGNATURE_HEADER: signature.sign(secret or self.signing_secret, timestamp=stamp, body=body),
        }

    # --- the server

    def _authorized(self, header: str | None) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.email}/token:{self.api_token}".encode()).decode()
        return header == expected

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        kind = _kind(path)
        status, answer_headers, answer = self._answer(method, path, query, kind, headers, body)
        with self._lock:
            self.received.append(Received(method, path, query, headers, body, time.monotonic(), status))
        return status, answer_headers, answer

    def _answer(
        self, method: str, path: str, query: dict[str, list[str]], kind: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        if not self._authorized(headers.get("authorization")):
            return 401, {}, {"error": "Couldn't authenticate you"}
        with self._lock:
            queued = self._failures.get((method, kind))
            if queued:
                status, retry_after = queued.pop(0)
                return status, {"Retry-After": retry_after} if retry_after else {}, {"error": "injected"}
        if method == "POST" and kind == "uploads":
            token, attachment_id = f"upl-{next(self._ids)}", next(self._ids)
            with self._lock:
                self.uploads[token] = {
                    "filename": query.get("filename", [""])[0],
                    "content_type": headers.get("content-type"),
                    "data": body,
                    "id": attachment_id,
                }
            attachment = {"id": attachment_id, "file_name": query.get("filename", [""])[0]}
            return 201, {}, {"upload": {"token": token, "attachment": attachment, "attachments": [attachment]}}
        if method == "PUT" and kind == "ticket":
            ticket_id = int(_TICKET.match(path).group(1))  # type: ignore[union-attr]
            comment = json.loads(body)["ticket"]["comment"]
            with self._lock:
                attachments = [{"id": self.uploads[t]["id"]} for t in comment.get("uploads", []) if t in self.uploads]
                self.comments.setdefault(ticket_id, []).append({**comment, "attachments": attachments})
                lost = self._lost_replies > 0
                self._lost_replies -= 1 if lost else 0
            if lost:
                return 500, {}, {"error": "the answer is lost"}
            return 200, {}, {"ticket": {"id": ticket_id}}
        if method == "GET" and kind == "comments":
            ticket_id = int(_COMMENTS.match(path).group(1))  # type: ignore[union-attr]
            with self._lock:
                comments = list(reversed(self.comments.get(ticket_id, [])))
            return 200, {}, {"comments": comments}
        return 404, {}, {"error": "RecordNotFound"}

    @contextmanager
    def running(self) -> Iterator[FakeZendesk]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, extra, answer = fake.handle(self.command, self.path, headers, body)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, name="fake-zendesk", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _kind(path: str) -> str:
    if path == "/api/v2/uploads":
        return "uploads"
    if _TICKET.match(path):
        return "ticket"
    if _COMMENTS.match(path):
        return "comments"
    return "other"
