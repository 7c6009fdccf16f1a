"""When to retry and how long to wait: one policy for the sync and the async client.

A retry is safe when the server applied nothing, or when applying twice is impossible:
- 408, 429 (rate limits, the plan's active-job cap, `Prefer: wait` slots, exports) and 409 `ledger_contention`
  are refused before anything is applied (the server rolled back), whatever the request;
- connection failures before the request was sent (refused, connect timeout, no pooled connection) likewise;
- 5xx and a connection that broke after sending may have applied the request, so they are retried only when a
  replay cannot apply it twice: reads, requests carrying an Idempotency-Key (the server replays the first
  outcome) and requests that only set a state (suspend, freeze, revoke). A 503 whose code says nothing was
  started (`service_unavailable`, `queue_unavailable`, `abuse_checks_unavailable`) is retried for any request.
An idempotency conflict (409 `idempotency_key_reused`) or any other 4xx is never retried."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC

import httpx

CONTENTION_CODES = frozenset({"ledger_contention"})
# 503s the API answers before doing any work (the rate limiter, the queue or the abuse checks unreachable).
REFUSED_BEFORE_WORK_CODES = frozenset({"service_unavailable", "queue_unavailable", "abuse_checks_unavailable"})
ALWAYS_RETRIED_STATUSES = frozenset({408, 429})


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """`max_retries` retries after the first attempt. Backoff doubles from `initial_delay` up to `max_delay`, each
    wait shortened by up to `jitter` (a fraction) at random so clients refused together do not return together.
    A `Retry-After` the server sends is waited for as given, unless it is longer than `max_retry_after` (then the
    error is raised at once). `deadline` bounds the whole call, every attempt and wait included."""

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 60.0
    deadline: float | None = None

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The wait before retry number `retry` (0 for the first retry) when the server named none."""
        base = min(self.max_delay, self.initial_delay * 2**retry)
        return base * (1 - self.jitter * rng())


def retry_status(status: int, code: str | None, *, replay_safe: bool) -> bool:
    if status in ALWAYS_RETRIED_STATUSES:
        return True
    if status == 409:
        return code in CONTENTION_CODES
    if status >= 500:
        return replay_safe or code in REFUSED_BEFORE_WORK_CODES
    return False


def retry_exception(exc: httpx.TransportError, *, replay_safe: bool) -> bool:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True  # nothing was sent
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return replay_safe
    return False  # a local protocol or proxy error: retrying would fail the same way


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
