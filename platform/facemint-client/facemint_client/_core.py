"""The core both clients share, free of I/O: configuration, how a call becomes requests, the retry loop, error
mapping and response parsing.

Every operation is a *flow*: a generator that yields effects (`Send` a request, `Sleep`, `Read` or `Drain` a
response) and returns the operation's value. The sync client performs those effects with `httpx.Client` and
`time.sleep`, the async one with `httpx.AsyncClient` and `asyncio.sleep` (`facemint_client._client`); everything
else, retries and idempotency keys included, is written once, here and in the resources."""

from __future__ import annotations

import enum
import json
import os
import platform
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, Final, Generic, TypeVar

import httpx

from facemint_client._convert import from_json
from facemint_client._retry import (
    REFUSED_BEFORE_WORK_CODES,
    RetryPolicy,
    parse_retry_after,
    retry_exception,
    retry_status,
)
from facemint_client._uploads import Upload
from facemint_client._version import __version__
from facemint_client.errors import APIConnectionError, APIError, APITimeoutError, error_from_problem

T = TypeVar("T")
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    base_url: str
    api_key: str | None
    timeout: float
    retry: RetryPolicy
    headers: Mapping[str, str] = field(default_factory=dict)


def make_config(
    *,
    api_key: str | None,
    base_url: str | None,
    timeout: float,
    max_retries: int | None,
    deadline: float | None,
    retry: RetryPolicy | None,
    headers: Mapping[str, str] | None,
) -> ClientConfig:
    """The configuration both clients build: arguments first, then FACEMINT_API_KEY and FACEMINT_API_URL (the
    same variables `facemint recharge` reads)."""
    policy = retry or RetryPolicy()
    if max_retries is not None:
        policy = replace(policy, max_retries=max_retries)
    if deadline is not None:
        policy = replace(policy, deadline=deadline)
    return ClientConfig(
        base_url=(base_url or os.environ.get("FACEMINT_API_URL") or DEFAULT_BASE_URL).rstrip("/"),
        api_key=api_key if api_key is not None else os.environ.get("FACEMINT_API_KEY"),
        timeout=timeout,
        retry=policy,
        headers=dict(headers or {}),
    )


USER_AGENT = f"facemint-client/{__version__} python/{platform.python_version()}"


# --- calls ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content) if self.content else None


@dataclass(frozen=True, kw_only=True)
class Call(Generic[T]):
    """One API operation: the request, and how its successful response becomes a value.

    `idempotent`: the operation moves tokens or creates a job, so it carries an Idempotency-Key (the caller's, or
    one made here), the same on every retry. `replay_safe`: sending it twice cannot apply it twice (default: a
    read, or `idempotent`); decides whether a 5xx or a broken connection is retried. `recover`: after an attempt
    whose outcome is unknown, turns the next attempt's refusal into a call that reads what the first one did, or
    into the call's value (`Settled`) when the refusal itself shows it (a delete that meets "not found")."""

    method: str
    path: str
    parse: Callable[[ApiResponse], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    uploads: Mapping[str, Upload] | None = None
    form: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    idempotent: bool = False
    idempotency_key: str | None = None
    replay_safe: bool | None = None
    timeout: float | None = None
    recover: Callable[[APIError], Call[T] | Settled[T] | None] | None = None

    @property
    def safe_to_replay(self) -> bool:
        if self.replay_safe is not None:
            return self.replay_safe
        return self.method in _SAFE_METHODS or self.idempotent


@dataclass(frozen=True, slots=True)
class Settled(Generic[T]):
    """`recover`'s answer when a retry's refusal proves the first attempt did what was asked: the call's value."""

    value: T


def deleted_unless_found(*codes: str) -> Callable[[APIError], Settled[None] | None]:
    """`recover` for a delete the server answers "not found" once it is done (`codes`): after a lost answer, that
    refusal means the first attempt deleted it."""

    def recover(error: APIError) -> Settled[None] | None:
        return Settled(None) if error.code in codes else None

    return recover


class NotGiven(enum.Enum):
    """`NOT_GIVEN`'s type: a parameter left out of the request, where None would send null (clear it)."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven.NOT_GIVEN


def given(**values: Any) -> dict[str, Any]:
    """A JSON body's members: NOT_GIVEN left out, None sent as null, dates and datetimes in ISO 8601."""
    return {
        name: value.isoformat() if isinstance(value, datetime | date) else value
        for name, value in values.items()
        if value is not NOT_GIVEN
    }


def query(**values: Any) -> dict[str, str]:
    """Query parameters: None left out, booleans as true/false, dates and datetimes in ISO 8601."""
    params: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        key = name.rstrip("_")  # `from_` -> `from`
        if isinstance(value, bool):
            params[key] = "true" if value else "false"
        elif isinstance(value, datetime | date):
            params[key] = value.isoformat()
        else:
            params[key] = str(value)
    return params


def new_idempotency_key() -> str:
    return f"fmc_{uuid.uuid4().hex}"


# --- effects -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Build (`httpx.Client.build_request` arguments) and send a request; answers the response, read unless
    `stream`. A transport failure is thrown into the flow as the httpx exception."""

    request: dict[str, Any]
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Read:
    """Read a streamed response to its end and close it; answers it."""

    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Drain:
    """Pass a streamed response's body to `sink` chunk by chunk, then close it."""

    response: httpx.Response
    sink: Callable[[bytes], object]


Effect = Send | Sleep | Read | Drain
Flow = Generator[Effect, Any, T]


# --- the retry loop ------------------------------------------------------------------------------------------


class Attempts:
    """The attempts of one call: its headers and idempotency key, what each answer means, when to give up."""

    def __init__(self, config: ClientConfig, call: Call[Any]) -> None:
        self.config, self.call = config, call
        self.policy = config.retry
        self.key = call.idempotency_key or (new_idempotency_key() if call.idempotent else None)
        self.retries = 0
        self.uncertain = False  # an earlier attempt may have been applied (its answer was lost)
        self.deadline_at = None if self.policy.deadline is None else time.monotonic() + self.policy.deadline

    def request(self) -> tuple[dict[str, Any], list[IO[bytes]]]:
        """The next attempt's request, and the files it opened (closed once it is sent)."""
        call, config = self.call, self.config
        timeout = call.timeout or config.timeout
        if self.deadline_at is not None:
            remaining = self.deadline_at - time.monotonic()
            if remaining <= 0:
                raise APITimeoutError(f"{call.method} {call.path}: the client's deadline passed")
            timeout = min(timeout, remaining)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **config.headers, **(call.headers or {})}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        if self.key is not None:
            headers["Idempotency-Key"] = self.key
        opened: list[IO[bytes]] = []
        files = None
        if call.uploads:
            files = {}
            for name, upload in call.uploads.items():
                files[name], handle = upload.open()
                if handle is not None:
                    opened.append(handle)
        request = {
            "method": call.method,
            "url": config.base_url + call.path,
            "params": call.params,
            "json": call.json,
            "content": call.content,
            "files": files,
            "data": call.form,
            "headers": headers,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        }
        return request, opened

    def _wait(self, suggested: float | None) -> float | None:
        """How long to wait before the next attempt, or None to stop."""
        if self.retries >= self.policy.max_retries:
            return None
        if suggested is not None and suggested > self.policy.max_retry_after:
            return None
        delay = suggested if suggested is not None else self.policy.backoff(self.retries)
        if self.deadline_at is not None and time.monotonic() + delay >= self.deadline_at:
            return None
        self.retries += 1
        return delay

    def after_error(self, exc: httpx.TransportError) -> float:
        """The wait before retrying after a transport failure; raises when it is not retried."""
        call = self.call
        if retry_exception(exc, replay_safe=call.safe_to_replay):
            delay = self._wait(None)
            if delay is not None:
                if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                    self.uncertain = True
                return delay
        kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        error = kind(f"{call.method} {call.path}: {type(exc).__name__}: {exc}".rstrip(": "))
        error.idempotency_key = self.key
        raise error from exc

    def after_response(self, response: ApiResponse) -> float | Call[Any] | Settled[Any] | None:
        """None when the response is a success; else the wait before retrying, or a follow-up call or the value
        (`recover`); raises the mapped error when it is not retried."""
        if response.status < 400:
            return None
        error = self.error(response)
        call = self.call
        if self.uncertain and call.recover is not None:
            follow = call.recover(error)
            if follow is not None:
                return follow
        if retry_status(response.status, error.code, replay_safe=call.safe_to_replay):
            delay = self._wait(parse_retry_after(response.headers.get("retry-after")))
            if delay is not None:
                if response.status >= 500 and error.code not in REFUSED_BEFORE_WORK_CODES:
                    self.uncertain = True
                return delay
        raise error

    def error(self, response: ApiResponse) -> APIError:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = error_from_problem(response.status, body if isinstance(body, dict) else None, response.headers)
        error.idempotency_key = self.key
        return error


def execute(config: ClientConfig, call: Call[T]) -> Flow[T]:
    """One call, retried as the policy says; returns the parsed answer."""
    attempts = Attempts(config, call)
    while True:
        request, opened = attempts.request()
        try:
            response = yield Send(request)
        except httpx.TransportError as exc:
            yield Sleep(attempts.after_error(exc))
            continue
        finally:
            for handle in opened:
                handle.close()
        answer = ApiResponse(response.status_code, response.headers, response.content)
        step = attempts.after_response(answer)
        if step is None:
            return call.parse(answer)
        if isinstance(step, Settled):
            settled: T = step.value
            return settled
        if isinstance(step, Call):
            result: T = yield from execute(config, step)
            return result
        yield Sleep(step)


def stream(config: ClientConfig, call: Call[Any], sink: Callable[[bytes], object]) -> Flow[httpx.Headers]:
    """A call whose successful body goes to `sink` as it arrives (downloads, exports); returns its headers.
    Retried like `execute` until the body starts; a failure while the body streams is raised."""
    attempts = Attempts(config, call)
    while True:
        request, opened = attempts.request()
        try:
            response = yield Send(request, stream=True)
        except httpx.TransportError as exc:
            yield Sleep(attempts.after_error(exc))
            continue
        finally:
            for handle in opened:
                handle.close()
        if response.status_code >= 400:
            response = yield Read(response)
            step = attempts.after_response(ApiResponse(response.status_code, response.headers, response.content))
            assert isinstance(step, float | int), "a streamed call has no follow-up"
            yield Sleep(step)
            continue
        try:
            yield Drain(response, sink)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{call.method} {call.path}: the body was cut: {exc}") from exc
        return response.headers


def to_file(path: str | os.PathLike[str], produce: Callable[[Callable[[bytes], object]], Flow[T]]) -> Flow[T]:
    """Run `produce` with a writer into a new file beside `path` (created as any file is, under the umask), renamed
    to `path` once it returns: a failure leaves no partial file there."""
    destination = Path(path)
    partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with partial.open("xb") as handle:
            result: T = yield from produce(handle.write)
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return result


def parse_json(cls: type[T]) -> Callable[[ApiResponse], T]:
    return lambda response: from_json(cls, response.json())


def parse_list(cls: type[T]) -> Callable[[ApiResponse], list[T]]:
    return lambda response: [from_json(cls, item) for item in response.json()]


def replayed(response: ApiResponse) -> bool:
    return response.headers.get("idempotent-replayed") == "true"
