"""`Prefer: wait=N` on a submit: wait for the job to finish without holding a thread.

The wait runs on the event loop: a Redis subscription (the worker publishes when a job reaches a terminal state)
wakes it, and Postgres, which decides, is re-read at least once a second in short thread-pool hops (a
notification can be lost, a committed status cannot). A client that goes away ends its wait at once. Concurrent
waits are capped per tenant (`prefer_wait_max_per_tenant`, 429 beyond) with Redis slots shared by every API
process, taken before the job is submitted so a refused wait leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from facemint import slots
from facemint.config import Settings
from facemint.jobs import queue
from facemint.jobs.errors import InvalidPreferWait, TooManyWaits

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?:$|[,;\s])", re.IGNORECASE)
SLOT_MARGIN_SECONDS = 30


def requested_wait(prefer: str | None, settings: Settings) -> int | None:
    """The seconds `Prefer: wait=N` asks for, capped by the setting; None without one (RFC 7240 lets a server
    ignore preferences it does not know)."""
    if not prefer:
        return None
    match = _PREFER_WAIT.search(prefer)
    if match is None:
        if "wait" in prefer.lower():
            raise InvalidPreferWait("use `Prefer: wait=<seconds>`")
        return None
    return min(int(match.group(1)), settings.prefer_wait_max_seconds) or None


def wait_pool(settings: Settings, tenant_id: int) -> slots.Pool:
    return slots.Pool(
        name=f"prefer-wait:{tenant_id}",
        limit=settings.prefer_wait_max_per_tenant,
        what="requests waiting for their jobs in this tenant",
        error=TooManyWaits,
    )


async def take_wait_slot(redis: AsyncRedis, settings: Settings, *, tenant_id: int, seconds: int) -> slots.Lease:
    return await slots.acquire_async(
        redis, [wait_pool(settings, tenant_id)], lifetime_seconds=seconds + SLOT_MARGIN_SECONDS
    )


async def wait_until_finished(
    redis: AsyncRedis,
    *,
    public_id: str,
    seconds: float,
    is_finished: Callable[[], Awaitable[bool]],
    client_gone: Callable[[], bool],
) -> bool:
    """Wait up to `seconds` for the job to finish; True once Postgres says it has. Returns False early when the
    client disconnects (nobody is left to answer)."""
    deadline = time.monotonic() + seconds
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    subscribed = False
    try:
        try:
            await pubsub.subscribe(queue.channel(public_id))
            subscribed = True
        except RedisError:
            pass  # Postgres is re-read every second anyway
        while True:
            if await is_finished():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or client_gone():
                return False
            pause = min(remaining, 1.0)
            if subscribed:
                try:
                    await pubsub.get_message(timeout=pause)
                    continue
                except RedisError:
                    subscribed = False
            await asyncio.sleep(pause)
    finally:
        with contextlib.suppress(RedisError):
            await pubsub.aclose()
