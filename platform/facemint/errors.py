"""The service's errors: `FacemintError` and one subclass per HTTP status; each domain's `errors.py` subclasses
these with a stable `code`. Billing raises `BillingError`, which carries the same contract (billing cannot import
the service). Nothing here knows about HTTP frameworks: `facemint.problems` renders them as RFC 9457 problem
details, and is the only code that builds error bodies."""

from __future__ import annotations

from typing import Any


class FacemintError(Exception):
    status_code = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class BadRequest(FacemintError):
    pass


class IdempotencyKeyRequired(BadRequest):
    code = "idempotency_key_required"
    title = "Idempotency-Key required"


class InvalidIdempotencyKey(BadRequest):
    code = "invalid_idempotency_key"
    title = "Invalid Idempotency-Key"


class Unauthorized(FacemintError):
    status_code = 401
    code = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str = "missing or invalid credentials", **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(FacemintError):
    status_code = 403
    code = "forbidden"
    title = "Not allowed"


class NotFound(FacemintError):
    status_code = 404
    code = "not_found"
    title = "Not found"


class InvalidCursor(FacemintError):
    status_code = 422
    code = "invalid_cursor"
    title = "Invalid cursor"


class Conflict(FacemintError):
    status_code = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(FacemintError):
    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(FacemintError):
    status_code = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class Unprocessable(FacemintError):
    status_code = 422
    code = "unprocessable"
    title = "Request cannot be processed"


class RateLimited(FacemintError):
    status_code = 429
    code = "rate_limited"
    title = "Too many requests"


class ServiceUnavailable(FacemintError):
    status_code = 503
    code = "service_unavailable"
    title = "Service unavailable"
