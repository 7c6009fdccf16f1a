"""Typed errors. Every error the API answers is an RFC 9457 problem document whose `type` is
`https://docs.facemint.dev/problems/<code>`; `error_from_problem` turns one into the most specific class below:
first by the code (`insufficient_tokens` -> `InsufficientTokens`), then by the HTTP status (404 -> `NotFound`).
Branch on the class or on `code`, never on `detail` (free text)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from facemint_client._retry import parse_retry_after

if TYPE_CHECKING:
    from facemint_client.models import Job

PROBLEM_TYPE_BASE = "https://docs.facemint.dev/problems/"


class FacemintError(Exception):
    """The base of everything this package raises. For an API error, `status`, `type`, `title`, `detail`, `code`
    and the whole problem document (`problem`) come from the response; for a client-side failure (a connection
    that never answered, a job that failed, a webhook that does not verify) `status` is None. `idempotency_key`
    is the key the failed call sent, if any: send the same request again under it to learn or finish what the
    first one did, never twice."""

    idempotency_key: str | None = None

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        type: str | None = None,
        title: str | None = None,
        code: str | None = None,
        problem: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.type = type
        self.title = title
        self.code = code
        self.problem: dict[str, Any] = dict(problem or {})
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def request_id(self) -> str | None:
        """The server's id for the request (also in its logs and audit trail): quote it when reporting."""
        value = self.problem.get("request_id") or self.headers.get("x-request-id")
        return str(value) if value else None

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        return f"{self.status} {self.code or self.title}: {self.detail}"


class APIError(FacemintError):
    """An error response from the API (a problem document, or a bare status from something in front of it)."""

    status_code: ClassVar[int | None] = None  # the status this class stands for (None: any)
    codes: ClassVar[tuple[str, ...]] = ()  # the problem codes mapped to this class


# --- by status -----------------------------------------------------------------------------------------------


class BadRequest(APIError):
    status_code = 400


class IdempotencyKeyRequired(BadRequest):
    codes = ("idempotency_key_required",)


class InvalidIdempotencyKey(BadRequest):
    codes = ("invalid_idempotency_key",)


class AuthenticationError(APIError):
    """401: missing, wrong, expired or revoked credentials (an access token dies when its user's credentials
    change)."""

    status_code = 401


class PaymentRequired(APIError):
    status_code = 402


class InsufficientTokens(PaymentRequired):
    """402 `insufficient_tokens`: nothing was recorded, held or queued. `needed` and `available` are tokens."""

    codes = ("insufficient_tokens",)

    @property
    def needed(self) -> int | None:
        return _int(self.problem.get("needed"))

    @property
    def available(self) -> int | None:
        return _int(self.problem.get("available"))


class PermissionDenied(APIError):
    status_code = 403


class InsufficientScope(PermissionDenied):
    codes = ("insufficient_scope", "privilege_not_held", "platform_admin_only")

    @property
    def missing(self) -> list[str]:
        return [str(scope) for scope in self.problem.get("missing") or []]


class UserFrozen(PermissionDenied):
    codes = ("user_frozen",)


class AccountFrozen(UserFrozen):
    """403 `account_frozen`: one of the tenant's abuse rules froze the caller's user at this submit; nothing was
    recorded or held. Its later calls answer `UserFrozen` until someone unfreezes it (`client.admin.users.unfreeze`,
    or `client.admin.abuse_triggers.resolve(..., unfreeze=True)`)."""

    codes = ("account_frozen",)


class TenantSuspended(PermissionDenied):
    codes = ("tenant_suspended",)


class SelfApproval(PermissionDenied):
    codes = ("self_approval",)


class NotFound(APIError):
    status_code = 404


class Conflict(APIError):
    status_code = 409


class IdempotencyConflict(Conflict):
    """409 `idempotency_key_reused`: this Idempotency-Key was already used with a different request. Never retried:
    send the new request under a new key, or the first request again under this one."""

    codes = ("idempotency_key_reused",)


class LedgerContention(Conflict):
    """409 `ledger_contention`: a conflicting ledger update rolled this one back; retried automatically (same
    key)."""

    codes = ("ledger_contention",)


class JobAlreadyFinished(Conflict):
    codes = ("job_already_finished",)


class JobNotFinished(Conflict):
    codes = ("job_not_finished",)


class ApprovalNotPending(Conflict):
    codes = ("approval_not_pending", "approval_expired")


class GrantChanged(Conflict):
    """409 `grant_changed`: approving this grant change would meet a grant whose terms changed since it was asked
    for (another change applied first). Nothing applied; the approval stays pending: reject it and ask again."""

    codes = ("grant_changed",)


class Gone(APIError):
    """410: e.g. `result_gone`, a job's result deleted, expired or never produced."""

    status_code = 410


class PayloadTooLarge(APIError):
    status_code = 413

    @property
    def max_bytes(self) -> int | None:
        return _int(self.problem.get("max_bytes"))


class UnsupportedMediaType(APIError):
    status_code = 415


class UnprocessableEntity(APIError):
    status_code = 422


class ValidationError(UnprocessableEntity):
    """422 `validation_error`: `errors` lists each field (`location`, `message`, `type`)."""

    codes = ("validation_error",)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.problem.get("errors") or [] if isinstance(e, Mapping)]


class InvalidLotTerms(UnprocessableEntity):
    """422 `invalid_lot_terms`: a credit lot's priority or expiry cannot be written, e.g. an approved recharge whose
    `expires_at` passed while it waited (the approval stays pending)."""

    codes = ("invalid_lot_terms",)


class InvalidGrant(UnprocessableEntity):
    """422 `invalid_grant`: a grant that cannot be made or changed so (above the per-account ceiling, ending in the
    past, a label on a plan grant...); `detail` says which."""

    codes = ("invalid_grant",)


class BatchRejected(UnprocessableEntity):
    """422 `batch_rejected`: an atomic batch with failing rows; nothing applied, `failed` lists every row."""

    codes = ("batch_rejected",)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self.problem.get("failed") or [] if isinstance(f, Mapping)]


class RateLimited(APIError):
    """429: a rate limit, the plan's active-job cap, `Prefer: wait` slots or concurrent exports. Retried
    automatically after `retry_after` seconds, within the client's limits."""

    status_code = 429

    @property
    def retry_after(self) -> float | None:
        header = parse_retry_after(self.headers.get("retry-after"))
        if header is not None:
            return header
        body = self.problem.get("retry_after")
        return float(body) if isinstance(body, int | float) else None


class ServerError(APIError):
    """5xx: `internal_error` (nothing half-applied), `database_unavailable`, `queue_unavailable`..."""


class ServiceUnavailable(ServerError):
    status_code = 503


class AbuseChecksUnavailable(ServiceUnavailable):
    """503 `abuse_checks_unavailable`: the tenant's abuse checks could not run, so the submit was refused before
    anything was recorded or held; retried automatically (after `Retry-After`), like any refusal before work."""

    codes = ("abuse_checks_unavailable",)


# --- client-side ---------------------------------------------------------------------------------------------


class APIConnectionError(FacemintError):
    """The API could not be reached, or the connection broke before an answer, and no retry was left."""


class APITimeoutError(APIConnectionError):
    """An attempt timed out (connect, read or write) and no retry was left, or the client's deadline passed."""


class JobFailed(FacemintError):
    """`jobs.wait()` saw the job end as `failed` (never charged) or `canceled`. `job` is the job as last read;
    `code` is its `error.code` (e.g. `no_source_face`)."""

    def __init__(self, job: Job) -> None:
        error = job.error
        code = error.code if error is not None else job.status
        detail = (error.detail if error is not None else None) or f"the job {job.status}"
        super().__init__(f"job {job.id} {job.status}: {detail}", code=code)
        self.job = job


class WaitTimeout(FacemintError):
    """`jobs.wait()` ran out of time; the job goes on (cancel it, or wait again). `job` is the job as last read."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")
        self.job = job


class IncompleteExport(FacemintError):
    """A finance export ended without its totals trailer: the server cut it at its time limit."""


class WebhookVerificationError(FacemintError):
    """A webhook's signature, timestamp or headers do not check out: do not act on it."""


# --- mapping -------------------------------------------------------------------------------------------------

_BY_STATUS: dict[int, type[APIError]] = {}
_BY_CODE: dict[str, type[APIError]] = {}


def _register(cls: type[APIError]) -> None:
    if cls.status_code is not None and cls.codes == ():
        _BY_STATUS.setdefault(cls.status_code, cls)
    for code in cls.codes:
        _BY_CODE[code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(APIError)


def code_of(problem: Mapping[str, Any]) -> str | None:
    """The problem's code: the last part of its `type` URI, or its `code` member."""
    kind = problem.get("type")
    if isinstance(kind, str) and kind.startswith(PROBLEM_TYPE_BASE):
        return kind.removeprefix(PROBLEM_TYPE_BASE)
    code = problem.get("code")
    return code if isinstance(code, str) else None


def error_class(status: int, code: str | None) -> type[APIError]:
    by_code = _BY_CODE.get(code or "")
    # A code can be answered with more than one status (`user_frozen`: 403 for the caller, 422 for a recipient):
    # the code's class only where its status agrees.
    if by_code is not None and by_code.status_code in (None, status):
        return by_code
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return APIError


def error_from_problem(status: int, problem: Mapping[str, Any] | None, headers: Mapping[str, str]) -> APIError:
    body = problem or {}
    code = code_of(body)
    detail = body.get("detail") or body.get("title") or f"HTTP {status}"
    return error_class(status, code)(
        str(detail),
        status=status,
        type=str(body["type"]) if "type" in body else None,
        title=str(body["title"]) if "title" in body else None,
        code=code,
        problem=body,
        headers={name.lower(): value for name, value in headers.items()},
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
