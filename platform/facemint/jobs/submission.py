"""The swap-submit flow: store the inputs, record the job and hold its price (or replay the job this idempotency
key already made), and queue it once the request's transaction has committed.

It spans the queue, storage and the ledger, so it lives here rather than in the endpoint; the request boundary
commits, and what must follow the commit (the queue entry) runs as an after-commit step. A commit that fails
leaves the stored inputs in place on purpose: the commit may have landed (a lost reply), in which case the job
needs them; if it did not, the orphan sweep removes them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import service as ledger
from billing.ledger.service import request_hash
from facemint.auth.principal import Principal
from facemint.config import Settings
from facemint.db import after_commit, after_rollback, before_commit, unit_of_work
from facemint.jobs import queue
from facemint.jobs import service as jobs
from facemint.jobs.errors import InvalidSwapRequest, QueueUnavailable
from facemint.storage import Storage, input_prefix

SWAP_OPERATION = "swap.image"


@dataclass(frozen=True, slots=True)
class SwapSubmission:
    """A checked swap request: its images (sniffed), options and (SSRF-checked) webhook URL."""

    files: dict[str, bytes]
    options: dict[str, Any]
    webhook_url: str | None

    @property
    def request_hash(self) -> bytes:
        """What tells a replay from a different request under the same Idempotency-Key."""
        return request_hash(
            {
                "operation": SWAP_OPERATION,
                "options": self.options,
                "webhook_url": self.webhook_url,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(self.files.items())},
            }
        )


@dataclass(frozen=True, slots=True)
class SwapSubmitted:
    job: Any  # the jobs row
    replayed: bool
    available: int  # the caller's available tokens right after (the hold's own figure for a new job)


def submit_swap(
    session: Session,
    *,
    settings: Settings,
    redis: Redis,
    sessions: sessionmaker[Session],
    storage: Storage,
    principal: Principal,
    idempotency_key: str,
    swap: SwapSubmission,
) -> SwapSubmitted:
    if principal.tenant_id is None:
        raise InvalidSwapRequest("platform staff have no token account to run swaps; use a tenant user")
    try:
        # Checked before anything is written. If Redis fails between here and the enqueue, the job is recorded
        # and held, and the dispatcher queues it once Redis answers (or its deadline releases it).
        redis.ping()
    except RedisError as exc:
        raise QueueUnavailable(
            "the job queue is unavailable; nothing was recorded or held, retry later",
            headers={"Retry-After": "5"},
        ) from exc

    public_id = jobs.new_public_id()
    prefix = input_prefix(public_id)
    after_rollback(session, lambda: storage.delete_prefix(prefix))
    for name, data in swap.files.items():
        storage.put(f"{prefix}/{name}", data, durable=False)
    outcome = jobs.submit(
        session,
        request=jobs.SubmitRequest(
            public_id=public_id,
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            api_key_id=principal.api_key_id,
            account_id=principal.account_id,
            operation=SWAP_OPERATION,
            queue=settings.queue_name,
            units=1,
            idempotency_key=idempotency_key,
            request_hash=swap.request_hash,
            options=swap.options,
            input_location=prefix,
            webhook_url=swap.webhook_url,
            max_attempts=settings.job_max_attempts,
            deadline_seconds=settings.job_deadline_seconds,
        ),
    )
    job = outcome.job
    if not outcome.replayed:
        tenant_id, cap = principal.tenant_id, settings.max_active_jobs(principal.plan)
        before_commit(session, lambda: jobs.ensure_within_active_cap(session, tenant_id=tenant_id, cap=cap))
    if outcome.replayed:
        storage.delete_prefix(prefix)  # the job this key made has its own inputs
    if job.status == "queued":
        # A replay queues too: if the first request's commit landed but its reply was lost, it never queued the
        # job. The queue entry is unique per job, so a job already queued is not queued twice.
        after_commit(session, lambda: _enqueue(settings, redis, sessions, job))
    available = outcome.available
    if available is None:
        available = ledger.get_balance(session, account_id=principal.account_id).available
    return SwapSubmitted(job=job, replayed=outcome.replayed, available=available)


def _enqueue(settings: Settings, redis: Redis, sessions: sessionmaker[Session], job: Any) -> None:
    try:
        queue.enqueue(
            redis, queue_name=job.queue, public_id=job.public_id, timeout_seconds=settings.job_deadline_seconds
        )
    except RedisError:
        # Recorded and held, but not queued: the dispatcher queues it as soon as Redis answers again, or the
        # sweeper fails it and releases its tokens at its deadline. Either way the tokens are accounted for.
        with unit_of_work(sessions) as session:
            jobs.mark_undispatched(session, job_id=job.id)
