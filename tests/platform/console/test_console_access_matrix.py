"""The console's permission matrix: every console route, for every role that may use the console, on its own
tenant's objects and on another tenant's, plus no session and no CSRF token. Over httpx (no browser).

Each route has one rule below naming the scope it needs, what a tenant admin gets and which object its path
names. A role without the scope is refused with 403 (finance's forged posts included); a tenant admin naming
another tenant's object gets 404, as if it did not exist; without a session a page redirects to sign-in and a
post answers 401; a post without the session's CSRF token answers 403 `csrf_rejected`. A role that may, may: a
page answers 200, a post is not refused (an empty form may still be invalid: 422). A new route without a rule
fails `test_every_console_route_has_exactly_one_rule`."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from facemint.app import create_app
from facemint.auth.scopes import Scope
from facemint.openapi import console_routes
from facemint.users.orm import Role
from tests.conftest import make_settings
from tests.platform.access_world import OTHER, OWN, World, build
from tests.platform.console.console_helpers import console_sign_in

CONSOLE_ROLES = (Role.platform_admin, Role.operator, Role.finance, Role.tenant_admin)
REFUSED = frozenset({401, 403, 404})


class Tenant(Enum):
    """What a tenant admin gets from a route."""

    scoped = "scoped"  # its own tenant's objects (another tenant's: 404); a list shows its own only
    refused = "refused"  # 403: a staff-only route
    any = "any"  # its own account's pages, like everyone's


class Target(Enum):
    none = "none"
    tenant = "tenant"
    user = "user"
    key = "key"
    batch = "batch"
    approval = "approval"
    job = "job"
    preview = "preview"  # a bulk-recharge preview: the viewer's own only; a stranger's id is 404 to everyone
    log = "log"


@dataclass(frozen=True)
class Rule:
    scope: Scope | None  # None: any console user
    tenant_admin: Tenant
    target: Target = Target.none
    ok: int | None = 200  # what a permitted GET answers (None: anything not refused)


S = Scope
T = Tenant
G = Target
RULES: dict[tuple[str, str], Rule] = {
    # The viewer's own session and account.
    ("POST", "/admin/sign-out"): Rule(None, T.any, ok=None),
    ("GET", "/admin/account"): Rule(None, T.any),
    ("POST", "/admin/account/timezone"): Rule(None, T.any, ok=None),
    ("POST", "/admin/account/totp/start"): Rule(None, T.any, ok=None),
    ("POST", "/admin/account/totp/confirm"): Rule(None, T.any, ok=None),
    ("POST", "/admin/account/totp/remove"): Rule(None, T.any, ok=None),
    # Dashboard: a tenant admin sees its own tenant's; running the books' checks is staff work.
    ("GET", "/admin/"): Rule(S.reports_read, T.scoped),
    ("POST", "/admin/reconciliation/run"): Rule(S.reconciliation_run, T.refused, ok=None),
    ("POST", "/admin/ledger/seal"): Rule(S.ledger_adjust, T.refused, ok=None),
    # Tenants.
    ("GET", "/admin/tenants"): Rule(S.tenants_read, T.scoped),
    ("POST", "/admin/tenants"): Rule(S.tenants_write, T.refused, ok=None),
    ("GET", "/admin/tenants/{tenant_id}"): Rule(S.tenants_read, T.scoped, G.tenant),
    ("POST", "/admin/tenants/{tenant_id}/plan"): Rule(S.tenants_write, T.refused, G.tenant, ok=None),
    ("POST", "/admin/tenants/{tenant_id}/suspend"): Rule(S.tenants_write, T.refused, G.tenant, ok=None),
    ("POST", "/admin/tenants/{tenant_id}/activate"): Rule(S.tenants_write, T.refused, G.tenant, ok=None),
    ("POST", "/admin/tenants/{tenant_id}/recharge"): Rule(S.recharges_write, T.scoped, G.tenant, ok=None),
    # Users.
    ("GET", "/admin/users"): Rule(S.users_read, T.scoped),
    ("GET", "/admin/users/new"): Rule(S.users_write, T.scoped),
    ("POST", "/admin/users"): Rule(S.users_write, T.scoped, ok=None),
    ("GET", "/admin/users/{user_id}"): Rule(S.users_read, T.scoped, G.user),
    ("POST", "/admin/users/{user_id}/role"): Rule(S.users_write, T.scoped, G.user, ok=None),
    ("POST", "/admin/users/{user_id}/password"): Rule(S.users_write, T.scoped, G.user, ok=None),
    ("POST", "/admin/users/{user_id}/freeze"): Rule(S.users_write, T.scoped, G.user, ok=None),
    ("POST", "/admin/users/{user_id}/unfreeze"): Rule(S.users_write, T.scoped, G.user, ok=None),
    ("POST", "/admin/users/{user_id}/revoke-sessions"): Rule(S.users_write, T.scoped, G.user, ok=None),
    # API keys.
    ("GET", "/admin/api-keys"): Rule(S.api_keys_read, T.scoped),
    ("GET", "/admin/api-keys/new"): Rule(S.api_keys_write, T.scoped),
    ("POST", "/admin/api-keys"): Rule(S.api_keys_write, T.scoped, ok=None),
    ("POST", "/admin/api-keys/{key_id}/revoke"): Rule(S.api_keys_write, T.scoped, G.key, ok=None),
    # Recharges, bulk recharges and batches.
    ("GET", "/admin/recharges"): Rule(S.recharges_read, T.scoped),
    ("POST", "/admin/recharges"): Rule(S.recharges_write, T.scoped, ok=None),
    ("POST", "/admin/recharges/bulk/preview"): Rule(S.recharges_write, T.scoped, ok=None),
    ("GET", "/admin/recharges/bulk/{preview_id}"): Rule(S.recharges_write, T.scoped, G.preview, ok=404),
    ("GET", "/admin/recharges/bulk/{preview_id}/failures.csv"): Rule(S.recharges_write, T.scoped, G.preview, ok=404),
    ("POST", "/admin/recharges/bulk/{preview_id}/confirm"): Rule(S.recharges_write, T.scoped, G.preview, ok=404),
    ("GET", "/admin/recharges/bulk/{preview_id}/run"): Rule(S.recharges_write, T.scoped, G.preview, ok=404),
    ("GET", "/admin/recharges/batches"): Rule(S.recharges_read, T.scoped),
    ("GET", "/admin/recharges/batches/{batch_id}"): Rule(S.recharges_read, T.scoped, G.batch),
    # Four-eyes approvals: tenant admins read their tenant's, never decide.
    ("GET", "/admin/approvals"): Rule(S.recharges_read, T.scoped),
    ("GET", "/admin/approvals/{approval_id}"): Rule(S.recharges_read, T.scoped, G.approval),
    ("POST", "/admin/approvals/{approval_id}/approve"): Rule(S.recharges_approve, T.refused, G.approval, ok=None),
    ("POST", "/admin/approvals/{approval_id}/reject"): Rule(S.recharges_approve, T.refused, G.approval, ok=None),
    # Jobs: finance reads them but sees no customer's image.
    ("GET", "/admin/jobs"): Rule(S.jobs_admin_read, T.scoped),
    ("GET", "/admin/jobs/{job_id}"): Rule(S.jobs_admin_read, T.scoped, G.job),
    ("GET", "/admin/jobs/{job_id}/thumbnail"): Rule(S.jobs_admin_results, T.scoped, G.job, ok=None),
    ("POST", "/admin/jobs/{job_id}/cancel"): Rule(S.jobs_admin_write, T.scoped, G.job, ok=None),
    # Finance: a tenant admin reads its own tenant's books.
    ("GET", "/admin/finance"): Rule(S.reports_read, T.scoped, ok=303),  # to the first log
    ("GET", "/admin/finance/reports/daily"): Rule(S.reports_read, T.scoped),
    ("GET", "/admin/finance/liability"): Rule(S.reports_read, T.scoped),
    ("GET", "/admin/finance/{log_name}"): Rule(S.reports_read, T.scoped, G.log),
    ("GET", "/admin/finance/{log_name}/export"): Rule(S.reports_read, T.scoped, G.log),
    ("GET", "/admin/audit"): Rule(S.audit_read, T.scoped),
    # Prices.
    ("GET", "/admin/prices"): Rule(S.prices_read, T.scoped),
    ("POST", "/admin/prices/preview"): Rule(S.prices_write, T.refused, ok=None),
    ("POST", "/admin/prices"): Rule(S.prices_write, T.refused, ok=None),
}
# Open without a session: signing in itself, and the bare /admin redirect.
PUBLIC = {
    ("GET", "/admin/sign-in"),
    ("POST", "/admin/sign-in"),
    ("POST", "/admin/sign-in/second-factor"),
    ("GET", "/admin"),
}


def path_for(template: str, rule: Rule, world: World, variant: str) -> str:
    side = world.side(variant)
    fillers = {
        Target.none: {},
        Target.tenant: {"tenant_id": lambda: side.tenant.id},
        Target.user: {"user_id": lambda: side.subject.id},
        Target.key: {"key_id": lambda: side.subject_key_id},
        Target.batch: {"batch_id": lambda: side.batch_id},
        Target.approval: {"approval_id": lambda: side.approval_id},
        Target.job: {"job_id": lambda: side.job_of(side.member)},
        Target.preview: {"preview_id": lambda: uuid.uuid4().hex},
        Target.log: {"log_name": lambda: "ledger"},
    }[rule.target]
    return template.format(**{name: make() for name, make in fillers.items()})


@dataclass(frozen=True)
class Cell:
    method: str
    template: str
    rule: Rule
    role: Role
    variant: str

    @property
    def label(self) -> str:
        return f"{self.role.value:<15} {self.variant:<5} {self.method} {self.template}"

    def expected(self) -> int | str:
        """An exact status, or "allowed" (anything not refused, below 500)."""
        role_scopes = _role_scopes(self.role)
        if self.rule.scope is not None and self.rule.scope not in role_scopes:
            return 403
        if self.role is Role.tenant_admin:
            if self.rule.tenant_admin is Tenant.refused:
                return 403
            if self.variant == OTHER and self.rule.target not in (Target.none, Target.preview, Target.log):
                return 404
        if self.rule.ok is not None:
            return self.rule.ok
        return "allowed"

    def matches(self, response: Response) -> bool:
        expected = self.expected()
        if expected == "allowed":
            return response.status_code not in REFUSED and response.status_code < 500
        return response.status_code == expected


def _role_scopes(role: Role) -> frozenset[Scope]:
    from facemint.auth.scopes import scopes_for_role

    return scopes_for_role(role)


def cells(*, mutating: bool) -> list[Cell]:
    made = []
    for (method, template), rule in RULES.items():
        if (method != "GET") is not mutating:
            continue
        variants = [OWN, OTHER] if rule.target not in (Target.none, Target.preview, Target.log) else [OWN]
        made += [Cell(method, template, rule, role, variant) for role in CONSOLE_ROLES for variant in variants]
    return made


@dataclass(frozen=True)
class Sent:
    cell: Cell
    path: str


def prepare(
    app: FastAPI, cells_to_send: list[Cell], stack: ExitStack
) -> tuple[dict[Role, tuple[_Jar, str]], list[Sent]]:
    """A new world holding what `cells_to_send` name and one console user per role (a tenant admin of the "own"
    tenant), committed, then each user signed in through the console's form with a client of its own."""
    with build(app.state.sessionmaker, app.state.settings) as world:
        emails = {
            role: world.user(
                role,
                tenant=world.own.tenant if role is Role.tenant_admin else None,
                email_tag="console",
                password=True,
            ).email
            for role in CONSOLE_ROLES
        }
        sent = [Sent(cell, path_for(cell.template, cell.rule, world, cell.variant)) for cell in cells_to_send]
    # One client (one event loop, as in a server: the app's async Redis pool is bound to it), one cookie jar per
    # role, swapped in before each request.
    client = stack.enter_context(TestClient(app))
    clients = {}
    for role, email in emails.items():
        client.cookies.clear()
        csrf = console_sign_in(client, email)
        clients[role] = (_Jar(client, dict(client.cookies)), csrf)
    client.cookies.clear()
    return clients, sent


@dataclass
class _Jar:
    """A role's cookies on the shared client."""

    client: TestClient
    cookies: dict[str, str]

    def use(self) -> TestClient:
        self.client.cookies.clear()
        self.client.cookies.update(self.cookies)
        return self.client


def send(client: TestClient, method: str, path: str, csrf: str | None) -> Response:
    if method == "GET":
        return client.get(path, follow_redirects=False)
    data = {"csrf_token": csrf} if csrf else {}
    return client.request(method, path, data=data, follow_redirects=False)


def run(app: FastAPI, cells_to_send: list[Cell]) -> list[str]:
    with ExitStack() as stack:
        return _run(app, cells_to_send, stack)


def _run(app: FastAPI, cells_to_send: list[Cell], stack: ExitStack) -> list[str]:
    clients, sent = prepare(app, cells_to_send, stack)
    failures = []
    for item in sent:
        jar, csrf = clients[item.cell.role]
        response = send(jar.use(), item.cell.method, item.path, csrf)
        if not item.cell.matches(response):
            code = response.headers.get("content-type", "")
            failures.append(
                f"{item.cell.label}: expected {item.cell.expected()}, got {response.status_code} ({item.path}, {code})"
            )
    return failures


@pytest.fixture(scope="module")
def matrix_app(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = make_settings(
        database_url,
        redis_url,
        data_dir=Path(tmp_path_factory.mktemp("console-matrix")),
        # Every world signs its users in: the per-address sign-in limit would refuse the matrix itself.
        login_limit_per_ip="100000/minute",
        queue_name=f"console-matrix-{uuid.uuid4().hex[:8]}",
    )
    return create_app(settings)


def test_every_console_route_has_exactly_one_rule(matrix_app: FastAPI) -> None:
    routes = {(method, route.path_format) for route in console_routes(matrix_app) for method in route.methods}
    declared = set(RULES) | PUBLIC
    assert routes == declared, {
        "routes without a rule": sorted(routes - declared),
        "rules without a route": sorted(declared - routes),
    }


def test_pages(matrix_app: FastAPI) -> None:
    """Every page and fragment, for every role, on its own tenant's objects and another's, in one world."""
    to_send = cells(mutating=False)
    failures = run(matrix_app, to_send)
    assert not failures, f"{len(failures)} of {len(to_send)} cells:\n" + "\n".join(failures)


def test_refused_posts(matrix_app: FastAPI) -> None:
    """Every post a role may not send (finance's forged posts, a tenant admin's reach into another tenant or a
    staff-only action) is refused; refusals change nothing, so they share one world."""
    to_send = [cell for cell in cells(mutating=True) if cell.expected() != "allowed" and cell.rule.ok != 404]
    failures = run(matrix_app, to_send)
    assert not failures, f"{len(failures)} of {len(to_send)} cells:\n" + "\n".join(failures)


@pytest.mark.parametrize("role", CONSOLE_ROLES, ids=[role.value for role in CONSOLE_ROLES])
def test_permitted_posts(matrix_app: FastAPI, role: Role) -> None:
    """Every post a role may send is not refused, each in a world of its own (a post may suspend, freeze,
    approve or sign out)."""
    to_send = [
        cell
        for cell in cells(mutating=True)
        if cell.role is role and (cell.expected() == "allowed" or cell.rule.ok == 404)
    ]
    failures = [failure for cell in to_send for failure in run(matrix_app, [cell])]
    assert not failures, f"{len(failures)} of {len(to_send)} cells:\n" + "\n".join(failures)


def test_without_a_session(matrix_app: FastAPI) -> None:
    """No session: every page redirects to sign-in, every post is 401, whatever it names."""
    with build(matrix_app.state.sessionmaker, matrix_app.state.settings) as world:
        paths = {key: path_for(key[1], rule, world, OTHER) for key, rule in RULES.items()}
    failures = []
    with TestClient(matrix_app) as client:
        failures = [failure for key, path in paths.items() if (failure := _anonymous(client, key[0], path))]
    assert not failures, failures


def _anonymous(client: TestClient, method: str, path: str) -> str | None:
    response = send(client, method, path, None)
    if method == "GET":
        ok = response.status_code == 303 and response.headers["location"].startswith("/admin/sign-in")
    else:
        ok = response.status_code == 401
    return None if ok else f"{method} {path}: {response.status_code}"


def test_posts_without_the_csrf_token_are_refused(matrix_app: FastAPI) -> None:
    """An operator (who may send every post) sending one without the session's token: 403 `csrf_rejected`."""
    posts = [
        Cell(method, template, rule, Role.operator, OTHER)
        for (method, template), rule in RULES.items()
        if method == "POST"
    ]
    failures = []
    with ExitStack() as stack:
        clients, sent = prepare(matrix_app, posts, stack)
        jar, _ = clients[Role.operator]
        for item in sent:
            response = send(jar.use(), "POST", item.path, None)
            if response.status_code != 403 or 'data-code="csrf_rejected"' not in response.text:
                failures.append(f"POST {item.path}: {response.status_code}")
    assert not failures, failures
