"""What follows an abuse rule's trigger, and its review. Flows spanning abuse, users, jobs, audit and webhooks:

- `record_triggers`: each trigger once per rule, user, window and counter generation (a unique key) as a review
  row, an audit event and an `abuse.triggered` account event to the tenant's events URL; a `freeze` trigger also
  freezes the user (`facemint.users.service.freeze_by_rule`: its credentials stop working on their next request)
  and releases its queued jobs (`facemint.jobs.frozen`), whose `Prefer: wait` callers are woken once committed.
  Only a trigger writes anything: the submit path's normal case never comes here.
- `resolve`: a person closes a trigger with a note, optionally unfreezing the user (`unfreeze_user`, the same
  checks as `POST /admin/v1/users/{id}/unfreeze`, which uses it too). An unfreeze starts the user's counters
  afresh (`facemint.abuse.counters.start_new_generation`), or the counts that froze it would freeze it again at
  its next job in the same window."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from facemint.abuse import counters
from facemint.abuse import service as abuse_service
from facemint.abuse.counters import Triggered
from facemint.abuse.errors import TriggerAlreadyResolved
from facemint.abuse.orm import AbuseTrigger, RuleAction, TriggerStatus
from facemint.abuse.schemas import AbuseTriggerRead, AbuseTriggerResolve
from facemint.audit import service as audit
from facemint.context import RequestContext
from facemint.db import after_commit, unit_of_work
from facemint.jobs import frozen as frozen_jobs
from facemint.jobs import queue
from facemint.users import service as user_service
from facemint.users.orm import User, UserStatus
from facemint.webhooks import service as webhooks

EVENT_TYPE = "abuse.triggered"


def record_triggers(
    session: Session,
    *,
    redis: Redis,
    tenant_id: int,
    user_id: int,
    job_public_id: str | None,
    triggered: Sequence[Triggered],
) -> list[AbuseTrigger]:
    """Record what the rules caught, in the caller's transaction, and freeze the user when any of them says so.
    Returns the triggers recorded now (one already recorded for its window is not recorded again)."""
    recorded = []
    for trigger in triggered:
        row = session.scalars(
            insert(AbuseTrigger)
            .values(
                tenant_id=tenant_id,
                rule_id=trigger.rule_id,
                user_id=user_id,
                kind=trigger.kind,
                action=trigger.action,
                window_start=datetime.fromtimestamp(trigger.window_start, UTC),
                window_seconds=trigger.window_seconds,
                generation=trigger.generation,
                observed=trigger.observed,
                job_public_id=job_public_id,
            )
            .on_conflict_do_nothing(constraint="uq_abuse_triggers_once_per_window")
            .returning(AbuseTrigger)
        ).one_or_none()
        if row is None:
            continue
        data = AbuseTriggerRead.model_validate(row).model_dump(mode="json")
        audit.record(
            session,
            context=None,
            action="abuse.trigger",
            target_type="user",
            target_id=user_id,
            tenant_id=tenant_id,
            after=data,
        )
        webhooks.record_tenant_event(
            session,
            tenant_id=tenant_id,
            event_type=EVENT_TYPE,
            payload={"type": EVENT_TYPE, "timestamp": data["created_at"], "data": data},
        )
        recorded.append(row)
    freezing = sorted({t.rule_id for t in triggered if t.action == RuleAction.freeze.value})
    if freezing:
        freeze_account(session, redis=redis, user_id=user_id, rule_ids=freezing)
    return recorded


def record_in_own_transaction(sessions: sessionmaker[Session], **kwargs: Any) -> None:
    """`record_triggers` in a transaction of its own: after the submit that tripped the rule was rolled back (a
    freeze refuses it) or committed (a flag), and from the worker."""
    with unit_of_work(sessions) as session:
        record_triggers(session, **kwargs)


def freeze_account(session: Session, *, redis: Redis, user_id: int, rule_ids: Sequence[int]) -> None:
    """Freeze the user (if it is not already) and release every job it has queued: they never run."""
    user_service.freeze_by_rule(session, user_id=user_id, reason={"abuse_rules": list(rule_ids)})
    released = frozen_jobs.release_queued_of_user(session, user_id=user_id)
    if released:
        after_commit(session, lambda: _notify_released(redis, [row.public_id for row in released]))


def _notify_released(redis: Redis, public_ids: list[str]) -> None:
    with contextlib.suppress(RedisError):  # waiters re-check Postgres every second
        for public_id in public_ids:
            queue.notify_finished(redis, public_id=public_id, status="canceled")


def unfreeze_user(session: Session, *, context: RequestContext, redis: Redis, user: User) -> bool:
    """`facemint.users.service.set_status` to active (its checks: who may unfreeze whom), and once committed a new
    generation of the user's abuse counters. True when the user was frozen."""
    was_frozen = user.status == UserStatus.frozen.value
    user_service.set_status(session, context=context, user=user, status=UserStatus.active)
    if was_frozen:
        user_id = user.id
        after_commit(session, lambda: counters.start_new_generation(redis, user_id=user_id))
    return was_frozen


def resolve(
    session: Session, *, context: RequestContext, redis: Redis, trigger_id: int, data: AbuseTriggerResolve
) -> AbuseTrigger:
    """Close an open trigger (once: 409 after), with a note and, if asked, the user's unfreeze."""
    principal = context.principal
    trigger = abuse_service.get_trigger(session, trigger_id=trigger_id, tenant_scope=principal.tenant_scope, lock=True)
    if trigger.status != TriggerStatus.open.value:
        raise TriggerAlreadyResolved(f"abuse trigger {trigger_id} is already resolved")
    unfroze = False
    if data.unfreeze:
        user = user_service.get(session, user_id=trigger.user_id, tenant_scope=principal.tenant_scope)
        unfroze = unfreeze_user(session, context=context, redis=redis, user=user)
    trigger.status = TriggerStatus.resolved.value
    trigger.resolved_by_user_id = principal.user_id
    trigger.resolved_at = func.now()
    trigger.note = data.note or None
    trigger.unfroze = unfroze
    session.flush()
    session.refresh(trigger)
    audit.record(
        session,
        context=context,
        action="abuse.trigger.resolve",
        target_type="abuse_trigger",
        target_id=trigger.id,
        tenant_id=trigger.tenant_id,
        before={"status": TriggerStatus.open.value},
        after={"status": trigger.status, "note": trigger.note, "unfroze": unfroze},
    )
    return trigger
