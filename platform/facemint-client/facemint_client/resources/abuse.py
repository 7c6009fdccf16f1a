"""`/admin/v1` abuse rules (`client.admin.abuse_rules`, per tenant) and the triggers they raise
(`client.admin.abuse_triggers`, for review).

Creating a rule takes no Idempotency-Key (the API takes none), so it is retried only when nothing reached the
server. Updating and deleting set a state and are retried like reads; a delete whose answer was lost and whose
retry meets `abuse_rule_not_found` was done by the first attempt. Resolving a trigger is decided once by the
server: a retry that meets `abuse_trigger_resolved` reads the trigger and returns it when it holds this call's
outcome, as approval decisions do."""

from __future__ import annotations

import builtins
from typing import Any, Literal

from facemint_client._convert import from_json
from facemint_client._core import ApiResponse, Call, deleted_unless_found, parse_json, parse_list
from facemint_client._resource import Listing, M, Resource, endpoint, listing, paged
from facemint_client.admin_models import AbuseRule, AbuseTrigger
from facemint_client.errors import APIError

RuleKind = Literal["jobs_per_window", "same_face_per_window", "spend_rate"]
RuleAction = Literal["flag", "freeze"]
TriggerStatus = Literal["open", "resolved"]


def _fields(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _rules(tenant_id: int) -> str:
    return f"/admin/v1/tenants/{tenant_id}/abuse-rules"


class AbuseRules(Resource[M]):
    """A tenant's rules. `jobs_per_window` and `same_face_per_window` take `max_jobs` (the job past it within one
    window triggers); `spend_rate` takes `multiple`, `baseline_hours` and `min_tokens`. A `freeze` rule freezes
    the user (the submit that crossed it raises `AccountFrozen`); a `flag` rule only records a trigger."""

    @endpoint("GET /admin/v1/tenants/{tenant_id}/abuse-rules")
    def list(self, tenant_id: int) -> Call[builtins.list[AbuseRule]]:
        """The tenant's rules, enabled or not, oldest first. Not paginated."""
        return Call(method="GET", path=_rules(tenant_id), parse=parse_list(AbuseRule))

    @endpoint("POST /admin/v1/tenants/{tenant_id}/abuse-rules")
    def create(
        self,
        tenant_id: int,
        *,
        kind: RuleKind,
        action: RuleAction,
        window_seconds: int,
        max_jobs: int | None = None,
        multiple: float | None = None,
        baseline_hours: int | None = None,
        min_tokens: int | None = None,
        enabled: bool = True,
    ) -> Call[AbuseRule]:
        """A new rule; it applies to the tenant's submits from the moment this returns."""
        body = _fields(
            kind=kind,
            action=action,
            enabled=enabled,
            window_seconds=window_seconds,
            max_jobs=max_jobs,
            multiple=multiple,
            baseline_hours=baseline_hours,
            min_tokens=min_tokens,
        )
        return Call(method="POST", path=_rules(tenant_id), json=body, parse=parse_json(AbuseRule))

    @endpoint("GET /admin/v1/tenants/{tenant_id}/abuse-rules/{rule_id}")
    def get(self, tenant_id: int, rule_id: int) -> Call[AbuseRule]:
        return Call(method="GET", path=f"{_rules(tenant_id)}/{rule_id}", parse=parse_json(AbuseRule))

    @endpoint("PATCH /admin/v1/tenants/{tenant_id}/abuse-rules/{rule_id}")
    def update(
        self,
        tenant_id: int,
        rule_id: int,
        *,
        action: RuleAction | None = None,
        enabled: bool | None = None,
        window_seconds: int | None = None,
        max_jobs: int | None = None,
        multiple: float | None = None,
        baseline_hours: int | None = None,
        min_tokens: int | None = None,
    ) -> Call[AbuseRule]:
        """Change what is given (its kind stays); `enabled=False` turns the rule off."""
        body = _fields(
            action=action,
            enabled=enabled,
            window_seconds=window_seconds,
            max_jobs=max_jobs,
            multiple=multiple,
            baseline_hours=baseline_hours,
            min_tokens=min_tokens,
        )
        return Call(
            method="PATCH",
            path=f"{_rules(tenant_id)}/{rule_id}",
            json=body,
            parse=parse_json(AbuseRule),
            replay_safe=True,
        )

    @endpoint("DELETE /admin/v1/tenants/{tenant_id}/abuse-rules/{rule_id}")
    def delete(self, tenant_id: int, rule_id: int) -> Call[None]:
        """Retire the rule: it stops applying and leaves the list (its triggers keep naming it)."""
        return Call(
            method="DELETE",
            path=f"{_rules(tenant_id)}/{rule_id}",
            parse=lambda response: None,
            replay_safe=True,
            recover=deleted_unless_found("abuse_rule_not_found"),
        )


class AbuseTriggers(Resource[M]):
    """What the rules caught (a tenant admin sees its tenant's)."""

    @paged("GET /admin/v1/abuse/triggers")
    def list(
        self,
        *,
        tenant_id: int | None = None,
        status: TriggerStatus | None = None,
        user_id: int | None = None,
        limit: int | None = None,
    ) -> Listing[AbuseTrigger]:
        """Triggers, newest first."""
        return listing(
            "/admin/v1/abuse/triggers", AbuseTrigger, limit=limit, tenant_id=tenant_id, status=status, user_id=user_id
        )

    @endpoint("GET /admin/v1/abuse/triggers/{trigger_id}")
    def get(self, trigger_id: int) -> Call[AbuseTrigger]:
        return _get_trigger(trigger_id)

    @endpoint("POST /admin/v1/abuse/triggers/{trigger_id}/resolve", "GET /admin/v1/abuse/triggers/{trigger_id}")
    def resolve(self, trigger_id: int, *, note: str | None = None, unfreeze: bool = False) -> Call[AbuseTrigger]:
        """Close an open trigger, with an optional `note`; `unfreeze=True` also unfreezes its user (needs what
        `admin.users.unfreeze` needs). 409 `abuse_trigger_resolved` when it was closed already."""

        def recover(error: APIError) -> Call[AbuseTrigger] | None:
            if error.code != "abuse_trigger_resolved":
                return None

            def parse(response: ApiResponse) -> AbuseTrigger:
                trigger = from_json(AbuseTrigger, response.json())
                if trigger.status != "resolved" or (unfreeze and not trigger.unfroze):
                    raise error
                return trigger

            return Call(method="GET", path=f"/admin/v1/abuse/triggers/{trigger_id}", parse=parse)

        return Call(
            method="POST",
            path=f"/admin/v1/abuse/triggers/{trigger_id}/resolve",
            json={**_fields(note=note), "unfreeze": unfreeze},
            parse=parse_json(AbuseTrigger),
            replay_safe=True,
            recover=recover,
        )


def _get_trigger(trigger_id: int) -> Call[AbuseTrigger]:
    return Call(method="GET", path=f"/admin/v1/abuse/triggers/{trigger_id}", parse=parse_json(AbuseTrigger))
