"""The access matrix (BOLA): every route of the app, as its route table has it, sent by every role, naming the
caller's own tenant's objects and another tenant's, with the answer each must give.

`RULES` holds one rule per (method, path): the scope it needs (or none: public), what tenant object its request
names (nothing; a tenant-owned object, so another tenant's answers 404; or a job, which only its owner sees), any
staff-only check beyond scopes, and a request that succeeds when allowed. The expected answer of every cell follows
from the rule and the role (`expected`):

- a role without the scope: 403 `insufficient_scope`; a tenant role on a staff-only route: 403 with its code;
- a tenant role naming another tenant's object: 404, the same body as an object that does not exist;
- a job route naming anyone's job but the caller's own (staff included: /v1 is the caller's own account): 404;
- otherwise the rule's success status (platform staff see every tenant).

A route without a rule, or a rule without a route, fails `test_every_route_has_exactly_one_rule`.

Reads share one world; every write cell gets a fresh one, so no cell's effect (a suspended tenant, a revoked key)
changes another's answer. A tenant role's successful reads must not show the other tenant (its marker text or its
`tenant_id`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from facemint.app import create_app
from facemint.auth.scopes import ROLE_SCOPES, Scope
from facemint.config import Settings
from facemint.openapi import api_routes
from facemint.users.orm import STAFF_ROLES, Role
from tests.conftest import make_settings
from tests.platform.access_calls import (
    PLAN_GRANT_BODY,
    Builder,
    Call,
    abuse_rule_path,
    admin_job_path,
    batch,
    body_for,
    fixed,
    job_path,
    object_path,
    own_alert,
    pool_alert,
    renamed_tenant,
    same_price,
    sign_in,
    swap,
    tenant_filter,
    tenant_path,
    unique,
    user_alert,
    user_path,
    zendesk_asset,
    zendesk_asset_upload,
    zendesk_connector,
    zendesk_path,
    zendesk_webhook,
)
from tests.platform.access_world import (
    OTHER,
    OWN,
    PEER,
    REASON,
    Side,
    World,
    build,
    tenant_grant_body,
)

ROLES = tuple(Role)
METRICS_TOKEN = "matrix-metrics-token-0123456789abcdef"

Route = tuple[str, str]  # (method, path template)


# --- rules ---------------------------------------------------------------------------------------------------


class Access(Enum):
    public = "public"  # no credentials needed: every role gets `ok`
    user = "user"  # a user's credentials: `scope` (None: any authenticated user)
    metrics_token = "metrics_token"  # its own bearer token (set here, as in prod): a user's credentials are 401


class Names(Enum):
    """What tenant object a route's request names, which decides its variants."""

    nothing = "nothing"  # variants: own
    tenant_object = "tenant_object"  # variants: own, other (another tenant's: 404 to tenant roles)
    own_job = "own_job"  # variants: own, peer, other (anyone's job but the caller's own: 404)


VARIANTS = {Names.nothing: (OWN,), Names.tenant_object: (OWN, OTHER), Names.own_job: (OWN, PEER, OTHER)}


@dataclass(frozen=True)
class Rule:
    scope: Scope | None
    names: Names
    call: Builder
    ok: int  # what an allowed cell answers
    staff_only: str | None = None  # the 403 code a tenant role gets, beyond scopes
    staff_ok: tuple[int, str] | None = None  # what staff get instead of `ok`: (status, code) of a domain refusal
    access: Access = Access.user
    mutates: bool | None = None  # default: any method but GET
    case: str = ""  # names a second rule of the same route


def rule(scope: Scope | None, names: Names, call: Builder, ok: int = 200, **kwargs: Any) -> tuple[Rule, ...]:
    """A route's only rule."""
    return (Rule(scope, names, call, ok, **kwargs),)


S, N = Scope, Names

RULES: dict[Route, tuple[Rule, ...]] = {
    # Public: the credentials sent are ignored.
    ("GET", "/healthz"): rule(None, N.nothing, fixed("/healthz"), access=Access.public),
    ("GET", "/readyz"): rule(None, N.nothing, fixed("/readyz"), access=Access.public),
    ("POST", "/auth/token"): rule(None, N.nothing, sign_in, access=Access.public, mutates=False),
    # Not in the schema: Prometheus' own bearer token; no user credential opens it.
    ("POST", "/admin/v1/reconciliation/runs"): rule(
        S.reconciliation_run, N.nothing, fixed("/admin/v1/reconciliation/runs"), ok=201
    ),
    ("GET", "/admin/v1/reconciliation/runs"): rule(
        S.reports_read, N.nothing, fixed("/admin/v1/reconciliation/runs"), staff_only="forbidden"
    ),
    ("GET", "/admin/v1/ledger/seals"): rule(
        S.reports_read, N.nothing, fixed("/admin/v1/ledger/seals"), staff_only="forbidden"
    ),
    ("POST", "/admin/v1/ledger/seals"): rule(S.ledger_adjust, N.nothing, fixed("/admin/v1/ledger/seals")),
    ("GET", "/admin/v1/reports/dashboard"): rule(S.reports_read, N.nothing, fixed("/admin/v1/reports/dashboard")),
    ("GET", "/admin/v1/recharges/batches/{batch_id}/rows"): rule(
        S.recharges_read, N.tenant_object, object_path("/admin/v1/recharges/batches/{}/rows", "batch_id")
    ),
    ("GET", "/metrics"): rule(None, N.nothing, fixed("/metrics"), access=Access.metrics_token),
    # Any authenticated user, for itself.
    ("POST", "/auth/revoke"): rule(None, N.nothing, fixed("/auth/revoke"), ok=204),
    # /v1: the caller's own account and jobs.
    ("GET", "/v1/balance"): rule(S.balance_read, N.nothing, fixed("/v1/balance")),
    ("GET", "/v1/ledger"): rule(S.ledger_read, N.nothing, fixed("/v1/ledger")),
    # The caller's own low-balance alert. Staff belong to no tenant, so no events URL could receive theirs.
    ("GET", "/v1/balance/alert"): rule(S.balance_read, N.nothing, own_alert, staff_ok=(404, "balance_alert_not_found")),
    ("PUT", "/v1/balance/alert"): rule(
        S.balance_alert_write,
        N.nothing,
        fixed("/v1/balance/alert", json={"threshold": 10}),
        staff_ok=(422, "balance_alert_without_tenant"),
    ),
    ("DELETE", "/v1/balance/alert"): rule(S.balance_alert_write, N.nothing, own_alert, ok=204),
    ("POST", "/v1/swaps"): rule(
        S.swaps_write,
        N.nothing,
        swap,
        ok=202,
        staff_ok=(422, "invalid_swap_request"),  # staff have no tokens
    ),
    ("GET", "/v1/jobs"): rule(S.jobs_read, N.nothing, fixed("/v1/jobs")),
    ("GET", "/v1/jobs/{job_id}"): rule(S.jobs_read, N.own_job, job_path()),
    ("POST", "/v1/jobs/{job_id}/cancel"): rule(S.jobs_write, N.own_job, job_path("/cancel")),
    # Queued, so no result yet: the owner gets 409, anyone else 404.
    ("GET", "/v1/jobs/{job_id}/result"): rule(S.jobs_read, N.own_job, job_path("/result"), ok=409),
    ("DELETE", "/v1/jobs/{job_id}"): rule(S.jobs_write, N.own_job, job_path(finished=True)),
    ("GET", "/v1/jobs/{job_id}/webhooks"): rule(S.jobs_read, N.own_job, job_path("/webhooks")),
    ("GET", "/v1/usage"): rule(S.usage_read, N.nothing, fixed("/v1/usage")),
    # Tenants.
    ("POST", "/admin/v1/tenants"): rule(
        S.tenants_write, N.nothing, lambda w, v, r: Call("/admin/v1/tenants", json={"name": unique("t")}), ok=201
    ),
    ("GET", "/admin/v1/tenants"): rule(S.tenants_read, N.nothing, fixed("/admin/v1/tenants")),
    ("GET", "/admin/v1/tenants/{tenant_id}"): rule(S.tenants_read, N.tenant_object, tenant_path()),
    ("PATCH", "/admin/v1/tenants/{tenant_id}"): rule(S.tenants_write, N.tenant_object, renamed_tenant),
    ("POST", "/admin/v1/tenants/{tenant_id}/suspend"): rule(S.tenants_write, N.tenant_object, tenant_path("/suspend")),
    ("POST", "/admin/v1/tenants/{tenant_id}/activate"): rule(
        S.tenants_write, N.tenant_object, tenant_path("/activate")
    ),
    ("GET", "/admin/v1/tenants/{tenant_id}/pool"): rule(S.balances_read, N.tenant_object, tenant_path("/pool")),
    # Low-balance alerts: read as balances are; set and removed by tenant admins (their own tenant) and staff.
    ("GET", "/admin/v1/tenants/{tenant_id}/pool/alert"): rule(S.balances_read, N.tenant_object, pool_alert),
    ("PUT", "/admin/v1/tenants/{tenant_id}/pool/alert"): rule(
        S.balance_alerts_write, N.tenant_object, tenant_path("/pool/alert", json={"threshold": 10})
    ),
    ("DELETE", "/admin/v1/tenants/{tenant_id}/pool/alert"): rule(
        S.balance_alerts_write, N.tenant_object, pool_alert, ok=204
    ),
    ("GET", "/admin/v1/users/{user_id}/balance/alert"): rule(S.balances_read, N.tenant_object, user_alert),
    ("PUT", "/admin/v1/users/{user_id}/balance/alert"): rule(
        S.balance_alerts_write, N.tenant_object, user_path("/balance/alert", json={"threshold": 10})
    ),
    ("DELETE", "/admin/v1/users/{user_id}/balance/alert"): rule(
        S.balance_alerts_write, N.tenant_object, user_alert, ok=204
    ),
    ("GET", "/admin/v1/tenants/{tenant_id}/events"): rule(S.tenants_read, N.tenant_object, tenant_path("/events")),
    ("GET", "/admin/v1/tenants/{tenant_id}/events-webhook"): rule(
        S.tenants_read, N.tenant_object, tenant_path("/events-webhook")
    ),
    ("PUT", "/admin/v1/tenants/{tenant_id}/events-webhook"): rule(
        S.webhooks_write, N.tenant_object, tenant_path("/events-webhook", json={"url": None})
    ),
    # Abuse rules and their triggers: tenant admins for their own tenant, ops for any; finance reads.
    ("GET", "/admin/v1/tenants/{tenant_id}/abuse-rules"): rule(
        S.abuse_read, N.tenant_object, tenant_path("/abuse-rules")
    ),
    ("POST", "/admin/v1/tenants/{tenant_id}/abuse-rules"): rule(
        S.abuse_write,
        N.tenant_object,
        tenant_path(
            "/abuse-rules",
            json={"kind": "jobs_per_window", "action": "flag", "max_jobs": 100, "window_seconds": 60},
        ),
        ok=201,
    ),
    ("GET", "/admin/v1/tenants/{tenant_id}/abuse-rules/{rule_id}"): rule(
        S.abuse_read, N.tenant_object, abuse_rule_path()
    ),
    ("PATCH", "/admin/v1/tenants/{tenant_id}/abuse-rules/{rule_id}"): rule(
        S.abuse_write, N.tenant_object, abuse_rule_path(json={"enabled": False})
    ),
    ("DELETE", "/admin/v1/tenants/{tenant_id}/abuse-rules/{rule_id}"): rule(
        S.abuse_write, N.tenant_object, abuse_rule_path(), ok=204
    ),
    ("GET", "/admin/v1/abuse/triggers"): rule(S.abuse_read, N.tenant_object, tenant_filter("/admin/v1/abuse/triggers")),
    ("GET", "/admin/v1/abuse/triggers/{trigger_id}"): rule(
        S.abuse_read, N.tenant_object, object_path("/admin/v1/abuse/triggers/{}", "abuse_trigger_id")
    ),
    ("POST", "/admin/v1/abuse/triggers/{trigger_id}/resolve"): rule(
        S.abuse_write,
        N.tenant_object,
        object_path("/admin/v1/abuse/triggers/{}/resolve", "abuse_trigger_id", json={"note": "reviewed"}),
    ),
    # Who may read the signing secret is who may rotate it: not finance.
    ("GET", "/admin/v1/tenants/{tenant_id}/webhook-secret"): rule(
        S.webhooks_write, N.tenant_object, tenant_path("/webhook-secret")
    ),
    ("POST", "/admin/v1/tenants/{tenant_id}/webhook-secret/rotate"): rule(
        S.webhooks_write, N.tenant_object, tenant_path("/webhook-secret/rotate")
    ),
    # Users: the targets are members (a tenant admin manages its members).
    ("POST", "/admin/v1/users"): rule(
        S.users_write,
        N.tenant_object,
        body_for(
            "/admin/v1/users",
            lambda side: {
                "email": f"{unique('new')}@matrix.example.test",
                "role": "member",
                "tenant_id": side.tenant.id,
            },
        ),
        ok=201,
    ),
    ("GET", "/admin/v1/users"): rule(S.users_read, N.tenant_object, tenant_filter("/admin/v1/users")),
    ("GET", "/admin/v1/users/{user_id}"): rule(S.users_read, N.tenant_object, user_path()),
    ("PATCH", "/admin/v1/users/{user_id}"): rule(S.users_write, N.tenant_object, user_path(json={"name": "Renamed"})),
    ("POST", "/admin/v1/users/{user_id}/freeze"): rule(S.users_write, N.tenant_object, user_path("/freeze")),
    ("POST", "/admin/v1/users/{user_id}/unfreeze"): rule(
        S.users_write, N.tenant_object, user_path("/unfreeze", frozen=True)
    ),
    ("POST", "/admin/v1/users/{user_id}/revoke-sessions"): rule(
        S.users_write, N.tenant_object, user_path("/revoke-sessions")
    ),
    # API keys: the subject member's.
    ("POST", "/admin/v1/api-keys"): rule(
        S.api_keys_write,
        N.tenant_object,
        body_for(
            "/admin/v1/api-keys", lambda side: {"user_id": side.subject.id, "name": "k", "scopes": ["balance:read"]}
        ),
        ok=201,
    ),
    ("GET", "/admin/v1/api-keys"): rule(S.api_keys_read, N.tenant_object, tenant_filter("/admin/v1/api-keys")),
    ("GET", "/admin/v1/api-keys/{key_id}"): rule(
        S.api_keys_read, N.tenant_object, object_path("/admin/v1/api-keys/{}", "subject_key_id")
    ),
    ("DELETE", "/admin/v1/api-keys/{key_id}"): rule(
        S.api_keys_write, N.tenant_object, object_path("/admin/v1/api-keys/{}", "subject_key_id")
    ),
    # Money: tenant admins pay from their pool; only staff fill a pool, adjust or reverse.
    ("POST", "/admin/v1/recharges"): (
        Rule(
            S.recharges_write,
            N.tenant_object,
            body_for("/admin/v1/recharges", lambda side: {"user_id": side.subject.id, "amount": 10, "reason": REASON}),
            ok=201,
        ),
        Rule(
            S.recharges_write,
            N.tenant_object,
            body_for("/admin/v1/recharges", lambda side: {"tenant_id": side.tenant.id, "amount": 10, "reason": REASON}),
            ok=201,
            staff_only="forbidden",
            case="pool",
        ),
    ),
    ("POST", "/admin/v1/recharges/batch"): rule(S.recharges_write, N.tenant_object, batch, ok=201),
    ("GET", "/admin/v1/recharges/batches"): rule(
        S.recharges_read, N.tenant_object, tenant_filter("/admin/v1/recharges/batches")
    ),
    ("GET", "/admin/v1/recharges/batches/{batch_id}"): rule(
        S.recharges_read, N.tenant_object, object_path("/admin/v1/recharges/batches/{}", "batch_id")
    ),
    ("GET", "/admin/v1/balances"): rule(S.balances_read, N.tenant_object, tenant_filter("/admin/v1/balances")),
    ("POST", "/admin/v1/adjustments"): rule(
        S.ledger_adjust,
        N.tenant_object,
        body_for("/admin/v1/adjustments", lambda side: {"user_id": side.subject.id, "amount": 5, "reason": REASON}),
        ok=201,
    ),
    ("POST", "/admin/v1/transactions/{transaction_id}/reversal"): rule(
        S.ledger_adjust,
        N.tenant_object,
        object_path("/admin/v1/transactions/{}/reversal", "transaction_id", json={"reason": REASON}),
        ok=201,
    ),
    # Four eyes: tenant admins read their tenant's held requests; only platform admins and operators decide.
    ("GET", "/admin/v1/recharge-approvals"): rule(
        S.recharges_read, N.tenant_object, tenant_filter("/admin/v1/recharge-approvals")
    ),
    ("GET", "/admin/v1/recharge-approvals/{approval_id}"): rule(
        S.recharges_read, N.tenant_object, object_path("/admin/v1/recharge-approvals/{}", "approval_id")
    ),
    ("POST", "/admin/v1/recharge-approvals/{approval_id}/approve"): rule(
        S.recharges_approve, N.tenant_object, object_path("/admin/v1/recharge-approvals/{}/approve", "approval_id")
    ),
    ("POST", "/admin/v1/recharge-approvals/{approval_id}/reject"): rule(
        S.recharges_approve, N.tenant_object, object_path("/admin/v1/recharge-approvals/{}/reject", "approval_id")
    ),
    # Audit, prices, reports.
    ("GET", "/admin/v1/audit-events"): rule(S.audit_read, N.tenant_object, tenant_filter("/admin/v1/audit-events")),
    # Every tenant's books at once: staff only, though tenant admins hold reports:read for their own views.
    ("GET", "/admin/v1/reconciliation"): rule(
        S.reports_read, N.nothing, fixed("/admin/v1/reconciliation"), staff_only="forbidden"
    ),
    ("GET", "/admin/v1/prices"): rule(S.prices_read, N.nothing, fixed("/admin/v1/prices")),
    ("POST", "/admin/v1/prices"): rule(S.prices_write, N.nothing, same_price, ok=201),
    # Jobs of the whole tenant (staff: every tenant). Finance reads them but neither cancels nor sees results.
    ("GET", "/admin/v1/jobs"): rule(S.jobs_admin_read, N.tenant_object, tenant_filter("/admin/v1/jobs")),
    ("GET", "/admin/v1/jobs/{job_id}"): rule(S.jobs_admin_read, N.tenant_object, admin_job_path()),
    ("GET", "/admin/v1/jobs/{job_id}/webhooks"): rule(S.jobs_admin_read, N.tenant_object, admin_job_path("/webhooks")),
    ("POST", "/admin/v1/jobs/{job_id}/cancel"): rule(S.jobs_admin_write, N.tenant_object, admin_job_path("/cancel")),
    # Queued, so no result yet: 410 to whoever may see results.
    ("GET", "/admin/v1/jobs/{job_id}/thumbnail"): rule(
        S.jobs_admin_results, N.tenant_object, admin_job_path("/thumbnail"), ok=410
    ),
    # Integrations: tenant admins configure their own tenant's, staff any; finance reads (credentials never shown).
    # The webhook is authenticated by Zendesk's signature alone: no user credential opens it (401 unsigned).
    ("POST", "/integrations/zendesk/{connector_id}/webhook"): rule(
        None, N.nothing, zendesk_webhook, ok=401, access=Access.public
    ),
    ("GET", "/admin/v1/tenants/{tenant_id}/integrations/zendesk"): rule(
        S.integrations_read, N.tenant_object, zendesk_path()
    ),
    ("PUT", "/admin/v1/tenants/{tenant_id}/integrations/zendesk"): rule(
        S.integrations_write, N.tenant_object, zendesk_connector
    ),
    ("GET", "/admin/v1/tenants/{tenant_id}/integrations/zendesk/rules"): rule(
        S.integrations_read, N.tenant_object, zendesk_path("/rules")
    ),
    ("PUT", "/admin/v1/tenants/{tenant_id}/integrations/zendesk/rules"): rule(
        S.integrations_write, N.tenant_object, zendesk_path("/rules", json={"rules": [], "default": None})
    ),
    ("GET", "/admin/v1/tenants/{tenant_id}/integrations/zendesk/assets"): rule(
        S.integrations_read, N.tenant_object, zendesk_path("/assets", configured=False)
    ),
    ("POST", "/admin/v1/tenants/{tenant_id}/integrations/zendesk/assets"): rule(
        S.integrations_write, N.tenant_object, zendesk_asset_upload, ok=201
    ),
    ("DELETE", "/admin/v1/tenants/{tenant_id}/integrations/zendesk/assets/{asset_id}"): rule(
        S.integrations_write, N.tenant_object, zendesk_asset, ok=204
    ),
    ("GET", "/admin/v1/tenants/{tenant_id}/integrations/zendesk/tickets"): rule(
        S.integrations_read, N.tenant_object, zendesk_path("/tickets", configured=False)
    ),
    # Recurring grants: a tenant admin makes and changes its tenant's pool-funded grants; plan grants are staff's,
    # and wait for a second operator (202 with the approval).
    ("POST", "/admin/v1/grants"): (
        Rule(S.grants_write, N.tenant_object, body_for("/admin/v1/grants", tenant_grant_body), ok=201),
        Rule(
            S.grants_write,
            N.nothing,
            fixed("/admin/v1/grants", json=PLAN_GRANT_BODY),
            ok=202,
            staff_only="forbidden",
            case="plan",
        ),
    ),
    ("GET", "/admin/v1/grants"): rule(S.grants_read, N.tenant_object, tenant_filter("/admin/v1/grants")),
    ("GET", "/admin/v1/grants/{grant_id}"): rule(
        S.grants_read, N.tenant_object, object_path("/admin/v1/grants/{}", "grant_id")
    ),
    ("PATCH", "/admin/v1/grants/{grant_id}"): rule(
        S.grants_write, N.tenant_object, object_path("/admin/v1/grants/{}", "grant_id", json={"amount": 7})
    ),
    ("GET", "/admin/v1/grants/{grant_id}/periods"): rule(
        S.grants_read, N.tenant_object, object_path("/admin/v1/grants/{}/periods", "grant_id")
    ),
    # Finance views: every tenant for staff, its own for a tenant admin.
    **{
        ("GET", f"/admin/v1/finance/{view}"): rule(
            S.reports_read, N.tenant_object, tenant_filter(f"/admin/v1/finance/{view}")
        )
        for view in (
            "recharges",
            "usage",
            "ledger",
            "audit",
            "recharges/export",
            "usage/export",
            "ledger/export",
            "audit/export",
            "reports/daily",
            "reports/liability",
        )
    },
}


# --- cells ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    method: str
    path: str
    rule: Rule
    role: Role
    variant: str

    @property
    def id(self) -> str:
        case = f"[{self.rule.case}]" if self.rule.case else ""
        return f"{self.method} {self.path}{case} {self.role.value} {self.variant}"

    @property
    def key(self) -> tuple[str, str, str, Role, str]:
        return (self.method, self.path, self.rule.case, self.role, self.variant)

    @property
    def mutates(self) -> bool:
        return self.rule.mutates if self.rule.mutates is not None else self.method != "GET"


@dataclass(frozen=True)
class Outcome:
    status: int
    code: str | None = None  # the problem's code, where one is expected


def expected(rule: Rule, role: Role, variant: str) -> Outcome:
    if rule.access is Access.public:
        return Outcome(rule.ok)
    if rule.access is Access.metrics_token:
        return Outcome(401, "unauthorized")
    if rule.scope is not None and rule.scope not in ROLE_SCOPES[role]:
        return Outcome(403, "insufficient_scope")
    staff = role in STAFF_ROLES
    if rule.staff_only is not None and not staff:
        return Outcome(403, rule.staff_only)
    if rule.names is Names.own_job and (staff or variant != OWN):
        return Outcome(404)
    if variant == OTHER and not staff:
        return Outcome(404)
    if staff and rule.staff_ok is not None:
        return Outcome(*rule.staff_ok)
    return Outcome(rule.ok)


# Cells where the product answers otherwise than its rule says: each is a bug, reported, and kept as a strict xfail
# until it is fixed. (method, path, case, role, variant) -> what happens.
KNOWN_BUGS: dict[tuple[str, str, str, Role, str], str] = {}


def all_cells() -> list[Cell]:
    return [
        Cell(method, path, rule, role, variant)
        for (method, path), rules in RULES.items()
        for rule in rules
        for role in ROLES
        for variant in VARIANTS[rule.names]
    ]


def is_known_bug(cell: Cell) -> bool:
    return cell.key in KNOWN_BUGS


CELLS = all_cells()


@dataclass(frozen=True)
class Harness:
    """The app every cell is sent to (one per module: cells differ in their worlds, not in the app)."""

    app: FastAPI
    client: TestClient
    settings: Settings

    def world(self) -> AbstractContextManager[World]:
        """A new world: what is made inside the block is committed when it ends."""
        return build(self.app.state.sessionmaker, self.settings)

    def send(self, method: str, call: Call, credentials: dict[str, str]) -> Response:
        headers = {**credentials, "Idempotency-Key": unique("matrix"), **call.headers}
        return self.client.request(
            method,
            call.path,
            params=call.params,
            json=call.json,
            content=call.content,
            files=call.files,
            headers=headers,
            follow_redirects=False,
        )


def mismatch(cell: Cell, response: Response, world: World) -> str | None:
    """Why `response` is not what `cell` expects, or None."""
    want = expected(cell.rule, cell.role, cell.variant)
    got = f"got {response.status_code} {response.text[:300]}"
    if response.status_code != want.status:
        return f"{cell.id}: expected {want.status} {want.code or ''}; {got}"
    if want.status >= 400:
        if response.headers.get("content-type") != "application/problem+json":
            return f"{cell.id}: expected a problem+json body; {got}"
        code = response.json().get("code", "")
        if want.code is not None and code != want.code:
            return f"{cell.id}: expected code {want.code}; {got}"
        if want.status == 404 and not code.endswith("not_found"):
            return f"{cell.id}: expected a *not_found code; {got}"
    elif cell.role not in STAFF_ROLES and cell.variant == OWN:
        return leak(cell, response, world.other)
    return None


def leak(cell: Cell, response: Response, other: Side) -> str | None:
    """A tenant role's success that shows the other tenant: its marker text (its name, its users' emails) or its
    `tenant_id` anywhere in a JSON answer."""
    if not other.made("tenant"):
        return None
    if other.marker in response.text:
        return f"{cell.id}: the answer shows the other tenant ({other.marker}): {response.text[:300]}"
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if is_json and other.tenant.id in set(tenant_ids(response.json())):
        return f"{cell.id}: the answer names the other tenant's id {other.tenant.id}: {response.text[:300]}"
    return None


def tenant_ids(value: Any) -> Iterator[int]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "tenant_id" and isinstance(item, int):
                yield item
            else:
                yield from tenant_ids(item)
    elif isinstance(value, list):
        for item in value:
            yield from tenant_ids(item)


def run_cells(harness: Harness, cells: list[Cell]) -> list[str]:
    """Send `cells` in one world (made first, then committed); returns the mismatches."""
    with harness.world() as world:
        calls = [cell.rule.call(world, cell.variant, cell.role) for cell in cells]
        credentials = [world.caller(cell.role).headers for cell in cells]
    failures = []
    for cell, call, caller in zip(cells, calls, credentials, strict=True):
        problem = mismatch(cell, harness.send(cell.method, call, caller), world)
        if problem:
            failures.append(problem)
    return failures


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix_app(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = make_settings(
        database_url,
        redis_url,
        data_dir=Path(tmp_path_factory.mktemp("matrix")),
        metrics_token=METRICS_TOKEN,
        queue_name=unique("matrix-swaps"),
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def harness(matrix_app: FastAPI) -> Iterator[Harness]:
    with TestClient(matrix_app) as client:
        yield Harness(matrix_app, client, matrix_app.state.settings)


# --- tests ---------------------------------------------------------------------------------------------------


def test_every_route_has_exactly_one_rule(matrix_app: FastAPI) -> None:
    """A new route without a rule (or a rule for a route that is gone) fails here: add its row to RULES."""
    routes = {(method, route.path_format) for route in api_routes(matrix_app) for method in route.methods}
    assert set(RULES) == routes, {
        "routes without a rule": sorted(routes - set(RULES)),
        "rules without a route": sorted(set(RULES) - routes),
    }


def test_reads(harness: Harness) -> None:
    """Every read cell (every role, own and other tenant), in one shared world."""
    cells = [c for c in CELLS if not c.mutates and not is_known_bug(c)]
    failures = run_cells(harness, cells)
    assert not failures, f"{len(failures)} of {len(cells)} read cells:\n" + "\n".join(failures)


@pytest.mark.parametrize("role", ROLES, ids=[role.value for role in ROLES])
def test_writes(harness: Harness, role: Role) -> None:
    """Every write cell of a role, each in a fresh world."""
    cells = [c for c in CELLS if c.mutates and c.role is role and not is_known_bug(c)]
    failures = [f for cell in cells for f in run_cells(harness, [cell])]
    assert not failures, f"{len(failures)} of {len(cells)} write cells:\n" + "\n".join(failures)


@pytest.mark.parametrize(
    "cell",
    [
        pytest.param(c, id=c.id, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c.key]))
        for c in CELLS
        if c.key in KNOWN_BUGS
    ]
    or [pytest.param(None, id="none", marks=pytest.mark.skip(reason="no known access bugs (KNOWN_BUGS is empty)"))],
)
def test_known_bugs(harness: Harness, cell: Cell) -> None:
    """A known bug's cell, alone in its world: fails until the bug is fixed, then XPASS fails the suite (strict)
    until its KNOWN_BUGS entry is removed."""
    failures = run_cells(harness, [cell])
    assert not failures, "\n".join(failures)


# --- no existence oracle --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A tenant admin's request naming another tenant's object (`target`), sent again naming one that does not
    exist (`missing`)."""

    method: str
    target: Callable[[Side], str]
    missing: str
    call: Callable[[str], Call]


MISSING_ID = str(9_000_000_000_000)
MISSING_EMAIL = "nobody-at-all@matrix.example.test"

PROBES = [
    Probe("GET", lambda side: str(side.tenant.id), MISSING_ID, lambda v: Call(f"/admin/v1/tenants/{v}")),
    Probe(
        "POST",
        lambda side: str(side.tenant.id),
        MISSING_ID,
        lambda v: Call(f"/admin/v1/tenants/{v}/webhook-secret/rotate"),
    ),
    Probe("POST", lambda side: str(side.subject.id), MISSING_ID, lambda v: Call(f"/admin/v1/users/{v}/freeze")),
    Probe("GET", lambda side: str(side.subject_key_id), MISSING_ID, lambda v: Call(f"/admin/v1/api-keys/{v}")),
    Probe("GET", lambda side: str(side.batch_id), MISSING_ID, lambda v: Call(f"/admin/v1/recharges/batches/{v}")),
    Probe("GET", lambda side: str(side.approval_id), MISSING_ID, lambda v: Call(f"/admin/v1/recharge-approvals/{v}")),
    Probe("GET", lambda side: str(side.grant_id), MISSING_ID, lambda v: Call(f"/admin/v1/grants/{v}")),
    Probe("PATCH", lambda side: str(side.grant_id), MISSING_ID, lambda v: Call(f"/admin/v1/grants/{v}", json={})),
    Probe("GET", lambda side: side.job_of(side.member), "job_" + "0" * 24, lambda v: Call(f"/v1/jobs/{v}")),
    Probe("GET", lambda side: str(side.abuse_trigger_id), MISSING_ID, lambda v: Call(f"/admin/v1/abuse/triggers/{v}")),
    Probe(
        "POST",
        lambda side: str(side.abuse_trigger_id),
        MISSING_ID,
        lambda v: Call(f"/admin/v1/abuse/triggers/{v}/resolve", json={"unfreeze": True}),
    ),
    Probe(
        "GET",
        lambda side: str(side.subject.id),
        MISSING_ID,
        lambda v: Call("/admin/v1/finance/ledger", params={"user_id": v}),
    ),
    # By email, in a body: a single recharge (404), a batch row (422, the row `unknown_user` either way).
    Probe(
        "POST",
        lambda side: side.subject.email,
        MISSING_EMAIL,
        lambda v: Call("/admin/v1/recharges", json={"email": v, "amount": 10, "reason": REASON}),
    ),
    Probe(
        "POST",
        lambda side: side.subject.email,
        MISSING_EMAIL,
        lambda v: Call(
            "/admin/v1/recharges/batch",
            params={"reason": REASON},
            content=f"email,amount\n{v},5\n".encode(),
            headers={"Content-Type": "text/csv"},
        ),
    ),
]


def comparable(response: Response, named: str) -> dict[str, Any]:
    """An answer as a prober sees it, less what echoes the request itself (its path, what it named, its id)."""
    body = response.json()
    body.pop("request_id", None)
    body.pop("instance", None)
    text = re.sub(rf"\b{re.escape(named)}\b", "{named}", json.dumps(body, sort_keys=True))
    return {"status": response.status_code, "content-type": response.headers.get("content-type"), "body": text}


def test_another_tenants_object_answers_exactly_like_a_missing_one(harness: Harness) -> None:
    """A tenant admin probing another tenant's ids and emails learns nothing: it gets the answer a missing one
    gets, byte for byte but for the echoed value."""
    with harness.world() as world:
        targets = [probe.target(world.other) for probe in PROBES]
        caller = world.own.admin
    differences = []
    for probe, target in zip(PROBES, targets, strict=True):
        answers = []
        for named in (target, probe.missing):
            answers.append(comparable(harness.send(probe.method, probe.call(named), caller.headers), named))
        if answers[0]["status"] not in (404, 422) or answers[0] != answers[1]:
            differences.append(f"{probe.method} {probe.call('{named}').path}: {answers[0]} != {answers[1]}")
    assert not differences, "\n".join(differences)
