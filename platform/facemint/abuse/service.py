"""A tenant's abuse rules (create, change, retire, read: each change audited and, once committed, mirrored into
Redis for the submit path: `facemint.abuse.counters`) and the triggers they raised (read). Recording a trigger,
freezing and unfreezing are flows of their own (`facemint.abuse.freezing`)."""

from __future__ import annotations

from typing import Any

from redis import Redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from facemint import tenancy
from facemint.abuse import counters
from facemint.abuse.errors import AbuseRuleNotFound, AbuseTriggerNotFound, InvalidAbuseRule
from facemint.abuse.orm import AbuseRule, AbuseTrigger, RuleKind, TriggerStatus
from facemint.abuse.schemas import AbuseRuleCreate, AbuseRuleUpdate, check_parameters
from facemint.audit import service as audit
from facemint.context import RequestContext
from facemint.db import after_commit
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant
from facemint.tenants import service as tenant_service

_SETTINGS = ("action", "enabled", "window_seconds", "max_jobs", "multiple", "baseline_hours", "min_tokens")


def snapshot(rule: AbuseRule) -> dict[str, Any]:
    return {"kind": rule.kind, **{name: getattr(rule, name) for name in _SETTINGS}}


def list_rules(session: Session, *, tenant_id: int, tenant_scope: int | None) -> list[AbuseRule]:
    """The tenant's rules (retired ones left out), oldest first."""
    tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    query = within_tenant(
        select(AbuseRule).where(AbuseRule.deleted_at.is_(None)),
        AbuseRule.tenant_id,
        tenant_scope=tenant_scope,
        tenant_id=tenant_id,
    )
    return list(session.scalars(query.order_by(AbuseRule.id)))


def get_rule(session: Session, *, tenant_id: int, rule_id: int, tenant_scope: int | None) -> AbuseRule:
    tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    rule = session.scalar(
        within_tenant(
            select(AbuseRule).where(AbuseRule.id == rule_id, AbuseRule.deleted_at.is_(None)),
            AbuseRule.tenant_id,
            tenant_scope=tenant_scope,
            tenant_id=tenant_id,
        )
    )
    if rule is None:
        raise AbuseRuleNotFound(f"abuse rule {rule_id} not found")
    return rule


def create_rule(
    session: Session, *, context: RequestContext, redis: Redis, tenant_id: int, data: AbuseRuleCreate
) -> AbuseRule:
    tenant_service.get(session, tenant_id=tenant_id, tenant_scope=context.principal.tenant_scope)
    _next_version(session, tenant_id=tenant_id)
    rule = AbuseRule(
        tenant_id=tenant_id,
        kind=data.kind.value,
        action=data.action.value,
        enabled=data.enabled,
        window_seconds=data.window_seconds,
        max_jobs=data.max_jobs,
        multiple=data.multiple,
        baseline_hours=data.baseline_hours,
        min_tokens=data.min_tokens,
        created_by_user_id=context.principal.user_id,
    )
    session.add(rule)
    session.flush()
    audit.record(
        session,
        context=context,
        action="abuse_rule.create",
        target_type="abuse_rule",
        target_id=rule.id,
        tenant_id=tenant_id,
        after=snapshot(rule),
    )
    _mirror_after_commit(session, redis, tenant_id=tenant_id)
    return rule


def update_rule(
    session: Session, *, context: RequestContext, redis: Redis, tenant_id: int, rule_id: int, data: AbuseRuleUpdate
) -> AbuseRule:
    rule = get_rule(session, tenant_id=tenant_id, rule_id=rule_id, tenant_scope=context.principal.tenant_scope)
    changes = data.model_dump(mode="json", exclude_unset=True)
    if any(changes.get(name, "set") is None for name in ("action", "enabled", "window_seconds")):
        raise InvalidAbuseRule("action, enabled and window_seconds cannot be cleared")
    merged = {name: changes.get(name, getattr(rule, name)) for name in _SETTINGS}
    try:
        check_parameters(
            RuleKind(rule.kind),
            window_seconds=merged["window_seconds"],
            max_jobs=merged["max_jobs"],
            multiple=merged["multiple"],
            baseline_hours=merged["baseline_hours"],
            min_tokens=merged["min_tokens"],
        )
    except ValueError as exc:
        raise InvalidAbuseRule(str(exc)) from exc
    before = snapshot(rule)
    # The version first: it takes the tenant row's lock, which orders this change against any other of the tenant.
    _next_version(session, tenant_id=tenant_id)
    for name, value in merged.items():
        setattr(rule, name, value)
    session.flush()
    after = snapshot(rule)
    if after != before:
        audit.record(
            session,
            context=context,
            action="abuse_rule.update",
            target_type="abuse_rule",
            target_id=rule.id,
            tenant_id=tenant_id,
            before=before,
            after=after,
        )
    _mirror_after_commit(session, redis, tenant_id=tenant_id)
    return rule


def retire_rule(session: Session, *, context: RequestContext, redis: Redis, tenant_id: int, rule_id: int) -> None:
    """The rule stops applying and leaves the lists; it stays in the database, named by its triggers."""
    rule = get_rule(session, tenant_id=tenant_id, rule_id=rule_id, tenant_scope=context.principal.tenant_scope)
    _next_version(session, tenant_id=tenant_id)
    rule.deleted_at = func.now()
    session.flush()
    audit.record(
        session,
        context=context,
        action="abuse_rule.delete",
        target_type="abuse_rule",
        target_id=rule.id,
        tenant_id=tenant_id,
        before=snapshot(rule),
    )
    _mirror_after_commit(session, redis, tenant_id=tenant_id)


def _next_version(session: Session, *, tenant_id: int) -> int:
    """Move the tenant's rules version on, holding the tenant row until commit: changes to one tenant's rules
    are serialised, and each one's snapshot (`_mirror_after_commit`) includes every change committed before it."""
    return int(
        session.execute(
            text(
                "UPDATE tenants SET abuse_rules_version = abuse_rules_version + 1 WHERE id = :id "
                "RETURNING abuse_rules_version"
            ),
            {"id": tenant_id},
        ).scalar_one()
    )


def _mirror_after_commit(session: Session, redis: Redis, *, tenant_id: int) -> None:
    """The rules as this transaction leaves them, written to Redis once it commits (never over a newer version).
    Should that write fail, the copy there stays as it was until it expires (`counters.RULES_TTL_SECONDS`) and is
    reloaded from Postgres."""
    session.flush()
    rule_set = counters.load_rule_set(session, tenant_id=tenant_id)
    after_commit(session, lambda: counters.publish(redis, tenant_id=tenant_id, rule_set=rule_set))


# --- triggers ------------------------------------------------------------------------------------------------


def list_triggers(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    status: TriggerStatus | None,
    user_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[AbuseTrigger]:
    """Newest first, within the caller's tenant scope."""
    query = within_tenant(select(AbuseTrigger), AbuseTrigger.tenant_id, tenant_scope=tenant_scope, tenant_id=tenant_id)
    if status is not None:
        query = query.where(AbuseTrigger.status == status.value)
    if user_id is not None:
        query = query.where(AbuseTrigger.user_id == user_id)
    return list(session.scalars(newest_first(query, AbuseTrigger.id, before_id=before_id, limit=limit)))


def get_trigger(session: Session, *, trigger_id: int, tenant_scope: int | None, lock: bool = False) -> AbuseTrigger:
    query = select(AbuseTrigger).where(AbuseTrigger.id == trigger_id)
    trigger = session.scalar(query.with_for_update() if lock else query)
    not_found = AbuseTriggerNotFound(f"abuse trigger {trigger_id} not found")
    if trigger is None:
        raise not_found
    tenancy.ensure_visible(tenant_scope, trigger.tenant_id, not_found=not_found)
    return trigger
