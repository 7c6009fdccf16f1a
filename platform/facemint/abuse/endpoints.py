"""/admin/v1/tenants/{id}/abuse-rules (a tenant's rules) and /admin/v1/abuse/triggers (what they caught, for
review). Tenant admins for their own tenant, operators and platform admins for any; finance reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from facemint.abuse import freezing
from facemint.abuse import service as abuse_service
from facemint.abuse.orm import TriggerStatus
from facemint.abuse.schemas import (
    AbuseRuleCreate,
    AbuseRuleRead,
    AbuseRuleUpdate,
    AbuseTriggerRead,
    AbuseTriggerResolve,
)
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import RedisDep, SessionDep, SettingsDep, page_params, request_context, require
from facemint.pagination import Page, PageParams, make_page

rules_router = APIRouter(prefix="/admin/v1/tenants", tags=["abuse"])
triggers_router = APIRouter(prefix="/admin/v1/abuse", tags=["abuse"])

Reader = Annotated[Principal, Depends(require(Scope.abuse_read))]
Writer = Annotated[Principal, Depends(require(Scope.abuse_write))]
Id = Annotated[int, Query(gt=0, lt=2**63)]


@rules_router.get("/{tenant_id}/abuse-rules", response_model=list[AbuseRuleRead])
def list_rules(tenant_id: int, session: SessionDep, principal: Reader) -> list[AbuseRuleRead]:
    """The tenant's abuse rules, enabled or not, oldest first."""
    rules = abuse_service.list_rules(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return [AbuseRuleRead.model_validate(rule) for rule in rules]


@rules_router.post("/{tenant_id}/abuse-rules", response_model=AbuseRuleRead, status_code=status.HTTP_201_CREATED)
def create_rule(
    tenant_id: int,
    body: AbuseRuleCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    principal: Writer,
) -> AbuseRuleRead:
    """A new rule; it applies to the tenant's submits from the moment this answers."""
    rule = abuse_service.create_rule(
        session, context=request_context(request, principal, settings), redis=redis, tenant_id=tenant_id, data=body
    )
    return AbuseRuleRead.model_validate(rule)


@rules_router.get("/{tenant_id}/abuse-rules/{rule_id}", response_model=AbuseRuleRead)
def get_rule(tenant_id: int, rule_id: int, session: SessionDep, principal: Reader) -> AbuseRuleRead:
    rule = abuse_service.get_rule(session, tenant_id=tenant_id, rule_id=rule_id, tenant_scope=principal.tenant_scope)
    return AbuseRuleRead.model_validate(rule)


@rules_router.patch("/{tenant_id}/abuse-rules/{rule_id}", response_model=AbuseRuleRead)
def update_rule(
    tenant_id: int,
    rule_id: int,
    body: AbuseRuleUpdate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    principal: Writer,
) -> AbuseRuleRead:
    """Change a rule's action, limits or window, or turn it off (`enabled: false`); its kind stays."""
    rule = abuse_service.update_rule(
        session,
        context=request_context(request, principal, settings),
        redis=redis,
        tenant_id=tenant_id,
        rule_id=rule_id,
        data=body,
    )
    return AbuseRuleRead.model_validate(rule)


@rules_router.delete("/{tenant_id}/abuse-rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rule(
    tenant_id: int,
    rule_id: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    principal: Writer,
) -> Response:
    """Retire a rule: it stops applying and leaves the list (its triggers keep naming it)."""
    abuse_service.retire_rule(
        session,
        context=request_context(request, principal, settings),
        redis=redis,
        tenant_id=tenant_id,
        rule_id=rule_id,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@triggers_router.get("/triggers", response_model=Page[AbuseTriggerRead])
def list_triggers(
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    tenant_id: Id | None = None,
    status: TriggerStatus | None = None,
    user_id: Id | None = None,
) -> Page[AbuseTriggerRead]:
    """What the rules caught, newest first: filters `tenant_id`, `status` (`open`, `resolved`), `user_id`."""
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    triggers = abuse_service.list_triggers(
        session,
        tenant_scope=principal.tenant_scope,
        tenant_id=tenant_id,
        status=status,
        user_id=user_id,
        before_id=page.before_id,
        limit=page.limit,
    )
    return make_page([AbuseTriggerRead.model_validate(t) for t in triggers], limit=page.limit)


@triggers_router.get("/triggers/{trigger_id}", response_model=AbuseTriggerRead)
def get_trigger(trigger_id: int, session: SessionDep, principal: Reader) -> AbuseTriggerRead:
    trigger = abuse_service.get_trigger(session, trigger_id=trigger_id, tenant_scope=principal.tenant_scope)
    return AbuseTriggerRead.model_validate(trigger)


@triggers_router.post("/triggers/{trigger_id}/resolve", response_model=AbuseTriggerRead)
def resolve_trigger(
    trigger_id: int,
    body: AbuseTriggerResolve,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    principal: Writer,
) -> AbuseTriggerRead:
    """Close an open trigger with an optional note; `unfreeze: true` also unfreezes the user (needs what
    `POST /admin/v1/users/{id}/unfreeze` needs, and starts the user's abuse counters afresh). Audited."""
    trigger = freezing.resolve(
        session, context=request_context(request, principal, settings), redis=redis, trigger_id=trigger_id, data=body
    )
    return AbuseTriggerRead.model_validate(trigger)
