"""The Redis side of jobs: the RQ queue entry (made after commit, never the source of truth) and the
notification a worker publishes when a job reaches a terminal state (for `Prefer: wait`)."""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus

TASK = "facemint.worker.tasks.run_job"
_LIVE = {RQStatus.QUEUED, RQStatus.STARTED, RQStatus.SCHEDULED, RQStatus.DEFERRED, RQStatus.CREATED}
# RQ stops a run this long after its job's deadline: the sweeper fails the job at the deadline (and the worker
# learns it from its heartbeat), so RQ's timeout is only the backstop for a run that never reaches a checkpoint.
RUN_TIMEOUT_MARGIN_SECONDS = 60


def run_timeout(seconds_left: float) -> int:
    """RQ's `job_timeout` for a run that may start now: the seconds left to the job's own deadline (which scales
    with a video's duration) plus the margin."""
    return max(1, math.ceil(seconds_left)) + RUN_TIMEOUT_MARGIN_SECONDS


# A client that answered within this long is taken to be up without another round trip (a ping per submit).
REACHABLE_FOR_SECONDS = 1.0
_answered_at: weakref.WeakKeyDictionary[Redis, float] = weakref.WeakKeyDictionary()


def ensure_reachable(redis: Redis) -> None:
    """Raise RedisError unless the queue's Redis answers: it answered in the last `REACHABLE_FOR_SECONDS` (a ping
    or a queue entry made through this client), or it answers a ping now. A check before anything is recorded,
    not a promise: Redis may fail right after it, and then the dispatcher queues the job once Redis is back."""
    answered = _answered_at.get(redis)
    if answered is not None and time.monotonic() - answered < REACHABLE_FOR_SECONDS:
        return
    redis.ping()
    _answered_at[redis] = time.monotonic()


def enqueue(
    redis: Redis, *, queue_name: str, public_id: str, timeout_seconds: int, meta: dict[str, Any] | None = None
) -> None:
    """Put the job on the queue once: RQ's `unique` refuses a second live entry with the same id. An entry left
    behind by an earlier, finished attempt is replaced. Duplicates would be harmless anyway: only a worker whose
    claim wins in Postgres runs the job. `meta` rides with the entry (the trace context, facemint.tracing)."""
    queue = Queue(queue_name, connection=redis)
    kwargs: dict[str, Any] = {
        "job_id": public_id,
        "meta": meta,
        "unique": True,
        "result_ttl": 0,  # Postgres keeps the outcome; RQ forgets it at once
        "failure_ttl": 3600,
        "job_timeout": timeout_seconds,
    }
    try:
        queue.enqueue(TASK, public_id, **kwargs)
        _answered_at[redis] = time.monotonic()
    except DuplicateJobError:
        try:
            existing = RQJob.fetch(public_id, connection=redis)
        except NoSuchJobError:
            existing = None
        if existing is not None and _really_waiting(redis, queue, existing):
            return
        if existing is not None:
            existing.delete()
        queue.enqueue(TASK, public_id, **kwargs)


def _really_waiting(redis: Redis, queue: Queue, job: RQJob) -> bool:
    """A live entry, except one marked queued that is not on the queue's list any more (a worker died between
    dequeueing and starting it, or Redis lost part of its data): that one would never run."""
    status = job.get_status(refresh=False)
    if status not in _LIVE:
        return False
    if status == RQStatus.QUEUED:
        return redis.lpos(queue.key, job.id) is not None
    return True


def channel(public_id: str) -> str:
    return f"facemint:jobs:{public_id}"


def notify_finished(redis: Redis, *, public_id: str, status: str) -> None:
    redis.publish(channel(public_id), status)


def wait_until(redis: Redis, *, public_id: str, timeout_seconds: float, is_finished: Callable[[], bool]) -> bool:
    """Wait for the job's terminal notification (or `timeout_seconds`); Postgres decides (`is_finished`), the
    notification only wakes the waiter. Checked after subscribing, so a job finishing in between is not missed."""
    deadline = time.monotonic() + timeout_seconds
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel(public_id))
        while True:
            if is_finished():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Re-check at least every second: a notification can be lost (Redis restarted) but Postgres cannot.
            pubsub.get_message(timeout=min(remaining, 1.0))
    finally:
        pubsub.close()
