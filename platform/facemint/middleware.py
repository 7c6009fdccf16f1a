from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facemint import tracing
from facemint.log_setup import log_scope
from facemint.problems import BodyTooLarge, problem_response

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """Takes a well-formed X-Request-ID from the caller or makes one; echoes it on the response. Every line logged
    while the request is handled carries it (`facemint.log_setup`; uvicorn's access line too, logged as the
    response starts)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        with log_scope(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class TracingMiddleware:
    """A server span per HTTP request (`facemint.tracing.server_span`), installed only while tracing is on. Sits
    inside `RequestIdMiddleware`: the span carries the request's ids, and the request's log lines the span's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        status_code: int | None = None

        async def send_with_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        with tracing.server_span(scope) as span:
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                tracing.end_server_span(span, scope, status_code=status_code)


class BodyLimitMiddleware:
    """Every request body is limited while it streams: a declared Content-Length over the route's limit is
    refused before a byte is read, and a body (chunked or lying) that streams past it stops the read with 413.
    Nothing buffers here: the limit is enforced inside `receive`, as the application reads.

    Limits are per path (`path_limits`, exact paths such as /v1/swaps), then per kind of path (`path_tests`, for
    paths with ids in them: the first test the path passes gives its limit), `default_limit` everywhere else."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_limit: int,
        path_limits: dict[str, int],
        path_tests: Sequence[tuple[Callable[[str], bool], int]] = (),
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.path_limits = path_limits
        self.path_tests = tuple(path_tests)

    def limit_for(self, path: str) -> int:
        limit = self.path_limits.get(path)
        if limit is not None:
            return limit
        return next((limit for test, limit in self.path_tests if test(path)), self.default_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            error = BodyTooLarge(limit)
            response = problem_response(
                Request(scope),
                status=413,
                code="payload_too_large",
                title="Payload too large",
                detail=str(error.detail),
                extra={"max_bytes": limit},
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)
