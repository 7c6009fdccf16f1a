"""One error format for every 4xx and 5xx: RFC 9457 problem details with a stable `code`, rendered here and only
here (`problem_response`), for `FacemintError`, `BillingError`, `EngineError`, validation errors, Starlette's own
HTTP errors and anything unexpected (`install_error_handlers`)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from billing.errors import BillingError
from facemint.errors import FacemintError
from inference.errors import EngineError

logger = logging.getLogger("facemint.errors")

PROBLEM_TYPE_BASE = "https://docs.facemint.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class BodyTooLarge(StarletteHTTPException):
    """Raised from inside `receive` when a request body streams past its route's limit. An HTTPException (not a
    FacemintError) because FastAPI re-raises only those from its own body parsing; anything else would become a
    400 there."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"the request body is larger than {limit} bytes")
        self.limit = limit


def allowed_methods(app: Any, path: str) -> list[str]:
    """Every method some API route takes at `path`, in a stable order."""
    from fastapi import routing

    methods: set[str] = set()
    for context in routing.iter_route_contexts(app.routes):
        if isinstance(context.original_route, routing.APIRoute) and context.path_regex.match(path):
            methods |= set(context.methods or ())
    return sorted(methods)


def problem_response(
    request: Request | None,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            body["request_id"] = request_id
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    # The admin console renders the same problem as a page (or an htmx fragment), with the same status and code.
    page = getattr(request.app.state, "problem_page", None) if request is not None else None
    if page is not None and request is not None:
        rendered = page(request, status=status, body=body, headers=headers)
        if rendered is not None:
            return rendered
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


# Postgres refusing a value the client sent (the request rolled back; nothing was applied).
_VALUE_STATES = {
    "22003": ("value_out_of_range", "a number in the request is out of range"),
    "22021": ("invalid_characters", "the request contains characters that cannot be stored"),
    "22P05": ("invalid_characters", "the request contains characters that cannot be stored"),
    "22001": ("value_too_long", "a value in the request is too long"),
}


def _refused_input(exc: Exception) -> tuple[str, str] | None:
    """A last line of defence: input the database or its driver refuses becomes a 422, not a 500."""
    from sqlalchemy.exc import StatementError

    cause: BaseException = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    state = getattr(cause, "pgcode", None)  # psycopg2 errors, wrapped by SQLAlchemy or raw (COPY)
    if state in _VALUE_STATES:
        return _VALUE_STATES[state]
    if isinstance(cause, ValueError) and "NUL (0x00)" in str(cause):  # psycopg2 refuses to send NUL
        return ("invalid_characters", "the request contains NUL characters")
    if isinstance(cause, UnicodeEncodeError):  # e.g. a lone surrogate from a JSON \ud800 escape
        return ("invalid_characters", "the request contains characters that cannot be encoded")
    return None


def _database_unreachable(exc: Exception) -> bool:
    """Postgres down, restarting or the connection cut: the request rolled back and may be retried."""
    from psycopg2 import OperationalError as DriverOperationalError
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import OperationalError as SAOperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, SAOperationalError | DriverOperationalError | PoolTimeout):
        return True  # a pool timeout: every connection is busy, the database is as good as unreachable
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def install_error_handlers(app: FastAPI) -> None:
    def handle_app_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FacemintError | BillingError | EngineError)
        headers = getattr(exc, "headers", None)
        return problem_response(
            request,
            status=exc.status_code,
            code=exc.code,
            title=exc.title,
            detail=exc.detail,
            extra=exc.extra,
            headers=headers,
        )

    def handle_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "location": [str(part) for part in err.get("loc", ())],
                "message": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        return problem_response(
            request,
            status=422,
            code="validation_error",
            title="Invalid request",
            detail="; ".join(f"{'.'.join(e['location'])}: {e['message']}" for e in errors[:5]),
            extra={"errors": errors},
        )

    def handle_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code, title = _STATUS_CODES.get(exc.status_code, ("http_error", "HTTP error"))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path (or a mount's own methods): name every
            # method the path really takes.
            allowed = allowed_methods(request.app, request.url.path)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem_response(
            request,
            status=exc.status_code,
            code=code,
            title=title,
            detail=detail,
            extra={"max_bytes": exc.limit} if isinstance(exc, BodyTooLarge) else None,
            headers=headers,
        )

    def handle_unexpected(request: Request, exc: Exception) -> Response:
        # This handler answers from outside every middleware, so it echoes the request id itself.
        request_id = getattr(request.state, "request_id", None)
        refused = _refused_input(exc)
        if refused is not None:
            return problem_response(
                request,
                status=422,
                code=refused[0],
                title="Invalid value",
                detail=refused[1],
                headers={"X-Request-ID": request_id} if request_id else None,
            )
        if _database_unreachable(exc):
            logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
            headers = {"Retry-After": "5"}
            if request_id:
                headers["X-Request-ID"] = request_id
            return problem_response(
                request,
                status=503,
                code="database_unavailable",
                title="Service unavailable",
                # Not "nothing was applied": a COMMIT whose reply was lost did apply. The key makes the retry safe.
                detail="the database is unavailable; retry with the same Idempotency-Key: a retry replays whatever "
                "was applied",
                headers=headers,
            )
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(
            request,
            status=500,
            code="internal_error",
            title="Internal error",
            detail="an unexpected error occurred; nothing was half-applied, retry with the same idempotency key",
            headers={"X-Request-ID": request_id} if request_id else None,
        )

    app.add_exception_handler(FacemintError, handle_app_error)
    app.add_exception_handler(BillingError, handle_app_error)
    app.add_exception_handler(EngineError, handle_app_error)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    # Registered for the exact types too: Starlette re-raises what only the `Exception` handler caught (after
    # answering), which would log a client's NUL byte as a server error.
    from psycopg2 import Error as DriverError
    from sqlalchemy.exc import StatementError

    for refusal_type in (ValueError, StatementError, DriverError):
        app.add_exception_handler(refusal_type, handle_unexpected)
    app.add_exception_handler(Exception, handle_unexpected)
