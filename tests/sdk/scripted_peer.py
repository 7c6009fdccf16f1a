"""A scripted HTTP peer for the retry tests: a stdlib server on loopback that answers each request with the next
scripted response (then 200 with a default body) and records when each request arrived and what it carried.
It stands in for an HTTP server only, to time refusals (429, 503 with Retry-After) precisely; everything about
Postgres and Redis is tested against the live API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROBLEM_BASE = "https://docs.facemint.dev/problems/"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_up: bool = False  # close the connection without answering

    @classmethod
    def problem(cls, status: int, code: str, **headers: str) -> Answer:
        body = {
            "type": PROBLEM_BASE + code,
            "title": code,
            "status": status,
            "detail": f"scripted {code}",
            "code": code,
        }
        return cls(status, body, {"Content-Type": "application/problem+json", **headers})


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Peer:
    url: str
    script: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=lambda: Answer(200, {"available": 1, "held": 0, "balance": 1}))
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests."""
        return [later.at - earlier.at for earlier, later in zip(self.seen, self.seen[1:], strict=False)]


@contextmanager
def scripted_peer(*script: Answer) -> Iterator[Peer]:
    state: dict[str, Peer] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            peer = state["peer"]
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with peer.lock:
                peer.seen.append(
                    Seen(
                        time.monotonic(), self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                answer = peer.script.pop(0) if peer.script else peer.default
            if answer.hang_up:
                self.close_connection = True
                return
            payload = json.dumps(answer.body).encode() if answer.body is not None else b""
            self.send_response(answer.status)
            headers = {"Content-Type": "application/json", **answer.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["peer"] = Peer(url=f"http://127.0.0.1:{server.server_address[1]}", script=list(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["peer"]
    finally:
        server.shutdown()
        server.server_close()
