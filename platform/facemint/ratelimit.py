"""Request rate limits: slowapi's Limiter on Redis storage (shared by every API process), keyed on the
API key's public id or the user id, and on the tenant; never on a plaintext key, never on an empty key.

Limits are applied by the authentication dependency, once the caller is known, so a single request counts
against its key bucket and its tenant bucket with the plan's limits (`FACEMINT_PLAN_LIMITS`). Failed
authentications count against the caller's address (`address_bucket`: IPv6 per /64), and only they are refused
by it."""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass
from typing import cast

from fastapi import Request
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from redis.commands.core import Script
from slowapi import Limiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facemint.config import Settings
from facemint.errors import RateLimited, ServiceUnavailable

_NAMESPACE = "facemint"


@dataclass(frozen=True, slots=True)
class WindowState:
    limit: int
    remaining: int
    reset_at: float


def limits_storage_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url


def client_ip(request: Request, trusted_proxies: list[str]) -> str:
    """The peer address; X-Forwarded-For is believed only when the peer is a configured proxy."""
    peer = request.client.host if request.client else "unknown"
    if peer in trusted_proxies:
        forwarded = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
        for hop in reversed(forwarded):
            if hop not in trusted_proxies:
                return hop
    return peer or "unknown"


def address_bucket(address: str) -> str:
    """The network an address's limits are counted under: an IPv4 address itself, an IPv6 address's /64 (one
    subscriber usually holds a whole /64, so per-address buckets would be free to multiply), an IPv4-mapped IPv6
    address as its IPv4 address. Anything that is not an address (a test client's name) stays as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), 64), strict=False))
    return str(ip)


def _rate_limited(reset_at: float, reason: str) -> RateLimited:
    retry_after = max(1, math.ceil(reset_at - time.time()))
    return RateLimited(
        f"{reason}; retry in {retry_after} s", headers={"Retry-After": str(retry_after)}, retry_after=retry_after
    )


class RateLimiter:
    def __init__(self, settings: Settings, *, redis_url: str) -> None:
        self.settings = settings
        self.limiter = Limiter(
            key_func=lambda request: client_ip(request, settings.trusted_proxies),
            storage_uri=limits_storage_uri(redis_url),
            # slowapi annotates these as strings; redis-py wants numbers (seconds).
            storage_options=cast(dict[str, str], {"socket_timeout": 1, "socket_connect_timeout": 1}),
            strategy="fixed-window",
            headers_enabled=True,
            key_prefix=_NAMESPACE,
            in_memory_fallback_enabled=False,
        )
        self._parsed: dict[str, RateLimitItem] = {}
        self._hit_script: Script | None = None

    def _item(self, limit: str) -> RateLimitItem:
        item = self._parsed.get(limit)
        if item is None:
            item = self._parsed[limit] = parse(limit)
        return item

    def ensure_open(self, bucket: str, limit: str, *, reason: str) -> None:
        """Refuse (429) when the bucket is already exhausted, without counting this request."""
        item = self._item(limit)
        try:
            allowed = self.limiter.limiter.test(item, bucket)
            reset_at = self.limiter.limiter.get_window_stats(item, bucket).reset_time if not allowed else 0.0
        except Exception as exc:  # Redis unreachable: refuse rather than run unlimited
            raise ServiceUnavailable("rate limiter unavailable", headers={"Retry-After": "5"}) from exc
        if not allowed:
            raise _rate_limited(reset_at, reason)

    def count(self, bucket: str, limit: str) -> None:
        """Count one event (a failure) against a bucket, refusing nothing: whoever comes next is refused by
        `ensure_open`."""
        try:
            self.limiter.limiter.hit(self._item(limit), bucket)
        except Exception as exc:  # Redis unreachable: refuse rather than run unlimited
            raise ServiceUnavailable("rate limiter unavailable", headers={"Retry-After": "5"}) from exc

    def hit(self, request: Request, buckets: list[tuple[str, str]], *, reason: str | None = None) -> None:
        """Count one request against each (bucket, limit). Raises RateLimited when any is exhausted.

        The fixed windows of `limits` (the same keys, so `ensure_open` and `count` see these counts), counted for
        every bucket in one Redis round trip (`_HIT_SCRIPT`) instead of three per bucket."""
        items = []
        for bucket, limit in buckets:
            if not bucket:
                raise ValueError("rate-limit buckets are never empty")  # slowapi would skip the limit
            items.append(self._item(limit))
        if not items:
            return
        storage = cast(RedisStorage, self.limiter.limiter.storage)  # always Redis: see __init__
        keys = [storage.prefixed_key(item.key_for(bucket)) for item, (bucket, _) in zip(items, buckets, strict=True)]
        try:
            if self._hit_script is None:
                self._hit_script = storage.get_connection().register_script(_HIT_SCRIPT)
            replies = self._hit_script(keys, [item.get_expiry() for item in items])
        except Exception as exc:  # Redis unreachable: refuse rather than run unlimited
            raise ServiceUnavailable("rate limiter unavailable", headers={"Retry-After": "5"}) from exc
        now = time.time()
        tightest: WindowState | None = None
        exhausted: WindowState | None = None
        for n, item in enumerate(items):
            count, ttl = int(replies[2 * n]), int(replies[2 * n + 1])
            state = WindowState(limit=item.amount, remaining=max(0, item.amount - count), reset_at=max(ttl, 0) + now)
            if tightest is None or state.remaining < tightest.remaining:
                tightest = state
            if count > item.amount and exhausted is None:
                exhausted = state
        request.state.rate_limit = exhausted or tightest
        if exhausted is not None:
            raise _rate_limited(exhausted.reset_at, reason or f"rate limit of {exhausted.limit} requests exceeded")


# For each key: one more hit in its window (a new window's key gets the window's expiry, as `limits`' own
# incr_expire script does), and the count and seconds left to live. ARGV[i] is KEYS[i]'s window in seconds.
_HIT_SCRIPT = b"""
local replies = {}
for i, key in ipairs(KEYS) do
    local count = redis.call('INCRBY', key, 1)
    if count == 1 then
        redis.call('EXPIRE', key, ARGV[i])
    end
    replies[2 * i - 1] = count
    replies[2 * i] = redis.call('TTL', key)
end
return replies
"""


class RateLimitHeadersMiddleware:
    """Adds X-RateLimit-* to every response whose request was counted (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state", {}).get("rate_limit")
                if isinstance(state, WindowState):
                    headers = list(message.get("headers", []))
                    headers += [
                        (b"x-ratelimit-limit", str(state.limit).encode()),
                        (b"x-ratelimit-remaining", str(max(0, state.remaining)).encode()),
                        (b"x-ratelimit-reset", str(math.ceil(state.reset_at)).encode()),
                    ]
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
