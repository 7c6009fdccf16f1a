"""Where the abuse rules are evaluated: at submit (`on_submit`: jobs per window, spend rate) and in the worker, at
the earliest point the source face's embedding exists, between the engine's embedding of it and the swap
(`source_face_check`: the same face in a window). Either way one Lua call counts and evaluates
(`facemint.abuse.counters`); only a trigger writes to Postgres (`facemint.abuse.freezing`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from facemint.abuse import counters, faces, freezing
from facemint.abuse.counters import Triggered
from facemint.abuse.errors import AbuseChecksUnavailable, AccountFrozen
from facemint.abuse.orm import RuleAction
from facemint.db import after_commit, after_rollback, unit_of_work

logger = logging.getLogger("facemint.abuse")

# What a caller frozen at its submit is told: not which rule, nor its limits (they would say how to stay under).
FROZEN_AT_SUBMIT = (
    "this account was frozen by an abuse rule of its organisation; nothing was recorded or held. Its administrators "
    "can review and lift the freeze"
)


def _to_record(triggered: list[Triggered]) -> list[Triggered]:
    """A flag is recorded the first time in its window only; a freeze every time it is seen (recording is
    idempotent), so a freeze whose recording failed is retried by the next job past the limit."""
    return [t for t in triggered if t.first or t.action == RuleAction.freeze.value]


def _freezes(triggered: list[Triggered]) -> bool:
    return any(t.action == RuleAction.freeze.value for t in triggered)


def on_submit(
    session: Session,
    *,
    redis: Redis,
    sessions: sessionmaker[Session],
    tenant_id: int,
    user_id: int,
    job_public_id: str,
    tokens: int,
) -> None:
    """Count a new job (not a replay) and its price, before the submit commits. A `freeze` refuses the submit
    (403 `account_frozen`: the boundary rolls the job and its hold back) and, after that rollback, freezes the
    user in a transaction of its own; a `flag` is recorded once the submit's transaction has ended, whichever way.
    Redis unreachable: 503, nothing recorded or held (as the queue's own check answers)."""
    try:
        triggered = counters.check_submit(
            redis,
            tenant_id=tenant_id,
            user_id=user_id,
            tokens=tokens,
            load=lambda: counters.load_rule_set(session, tenant_id=tenant_id),
        )
    except RedisError as exc:
        raise AbuseChecksUnavailable(
            "the abuse checks are unavailable; nothing was recorded or held, retry later",
            headers={"Retry-After": "5"},
        ) from exc
    to_record = _to_record(triggered)
    if not to_record:
        return

    def record() -> None:
        freezing.record_in_own_transaction(
            sessions,
            redis=redis,
            tenant_id=tenant_id,
            user_id=user_id,
            job_public_id=job_public_id,
            triggered=to_record,
        )

    if _freezes(to_record):
        # After the rollback: this transaction holds the account's row (the hold), which the release of the
        # user's queued jobs needs.
        after_rollback(session, record)
        raise AccountFrozen(FROZEN_AT_SUBMIT)
    after_commit(session, record)
    after_rollback(session, record)


class FrozenByRule(Exception):
    """Raised from the engine's source-face hook: a rule froze the job's user; the job is released, not run."""


def source_face_check(
    *, redis: Redis, sessions: sessionmaker[Session], job: Any
) -> Callable[[NDArray[np.float32]], None] | None:
    """The engine's hook for a job's source face (`on_source_face`), or None for a job without a tenant. It hashes
    the embedding (`facemint.abuse.faces`), counts it and, past a `same_face_per_window` rule, records the trigger;
    a freeze raises `FrozenByRule` before the swap starts, after the user's other queued jobs were released."""
    if job.tenant_id is None:
        return None
    tenant_id, user_id, public_id = int(job.tenant_id), int(job.user_id), str(job.public_id)

    def load() -> counters.RuleSet:
        with unit_of_work(sessions) as session:
            return counters.load_rule_set(session, tenant_id=tenant_id)

    def check(embedding: NDArray[np.float32]) -> None:
        triggered = counters.check_face(
            redis,
            tenant_id=tenant_id,
            user_id=user_id,
            job_public_id=public_id,
            bands=faces.face_bands(embedding),
            load=load,
        )
        to_record = _to_record(triggered)
        if to_record:
            freezing.record_in_own_transaction(
                sessions,
                redis=redis,
                tenant_id=tenant_id,
                user_id=user_id,
                job_public_id=public_id,
                triggered=to_record,
            )
        if _freezes(to_record):
            logger.info("job %s stopped before its swap: an abuse rule froze its account", public_id)
            raise FrozenByRule("released without running: an abuse rule froze the account")

    return check
