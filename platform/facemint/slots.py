"""Concurrency caps shared by every API process: a counted set of slots in Redis (a sorted set of holders scored
by when each slot lapses). A holder that dies without releasing frees its slot when its time runs out, so a
crash never shrinks the cap for good.

Used for what holds a connection for long: `Prefer: wait` requests (per tenant) and finance exports (per tenant
and in total)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from facemint.errors import RateLimited, ServiceUnavailable

_PREFIX = "facemint:slots:"

# KEYS: the pools to take a slot in, all or none. ARGV: holder, lifetime (ms), then one limit per key.
# Lapsed holders are dropped first; the pools expire on their own once nobody holds a slot.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapse = now + tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
        return i
    end
end
for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, lapse, ARGV[1])
    redis.call('PEXPIRE', key, tonumber(ARGV[2]) + 1000)
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    limit: int
    what: str  # for the 429's detail: "concurrent exports for this tenant"
    error: type[RateLimited] = RateLimited  # the 429 to answer with (a subclass names its own `code`)

    @property
    def key(self) -> str:
        return _PREFIX + self.name


@dataclass(frozen=True, slots=True)
class Lease:
    pools: tuple[Pool, ...]
    holder: str


def _refusal(pool: Pool, retry_after: int) -> RateLimited:
    return pool.error(
        f"too many {pool.what} (at most {pool.limit}); retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
        retry_after=retry_after,
        limit=pool.limit,
    )


def _unavailable(exc: BaseException) -> ServiceUnavailable:
    error = ServiceUnavailable("the concurrency limiter is unavailable", headers={"Retry-After": "5"})
    error.__cause__ = exc
    return error


def _acquire_args(pools: list[Pool], holder: str, lifetime_seconds: float) -> list[Any]:
    """The script's arguments: the number of keys, the keys, then the holder, the lifetime and the limits."""
    return [
        _ACQUIRE,
        len(pools),
        *[p.key for p in pools],
        holder,
        int(lifetime_seconds * 1000),
        *[p.limit for p in pools],
    ]


def _lease_or_refusal(full: int, pools: list[Pool], holder: str, retry_after: int) -> Lease:
    if full:
        raise _refusal(pools[full - 1], retry_after)
    return Lease(pools=tuple(pools), holder=holder)


def acquire(redis: Redis, pools: list[Pool], *, lifetime_seconds: float, retry_after: int = 5) -> Lease:
    """A slot in every pool, or RateLimited (429) naming the first full one. Release it with `release`."""
    holder = uuid.uuid4().hex
    try:
        full = int(redis.eval(*_acquire_args(pools, holder, lifetime_seconds)))
    except RedisError as exc:
        raise _unavailable(exc) from exc
    return _lease_or_refusal(full, pools, holder, retry_after)


def release(redis: Redis, lease: Lease) -> None:
    try:
        pipeline = redis.pipeline(transaction=False)
        for pool in lease.pools:
            pipeline.zrem(pool.key, lease.holder)
        pipeline.execute()
    except RedisError:
        pass  # the slot lapses on its own


async def acquire_async(
    redis: AsyncRedis, pools: list[Pool], *, lifetime_seconds: float, retry_after: int = 5
) -> Lease:
    """`acquire` on the event loop."""
    holder = uuid.uuid4().hex
    try:
        full = int(await redis.eval(*_acquire_args(pools, holder, lifetime_seconds)))
    except RedisError as exc:
        raise _unavailable(exc) from exc
    return _lease_or_refusal(full, pools, holder, retry_after)


async def release_async(redis: AsyncRedis, lease: Lease) -> None:
    try:
        async with redis.pipeline(transaction=False) as pipeline:
            for pool in lease.pools:
                pipeline.zrem(pool.key, lease.holder)
            await pipeline.execute()
    except RedisError:
        pass  # the slot lapses on its own
