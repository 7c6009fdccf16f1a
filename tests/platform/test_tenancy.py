"""Tenancy and roles: another tenant's objects answer 404 on every admin route; members and finance are kept
out of what their roles do not cover; only staff create tenants; operators cannot mint platform admins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis
from sqlalchemy.orm import Session

from facemint.abuse.orm import RuleAction, RuleKind
from facemint.auth.principal import Principal
from facemint.auth.scopes import scopes_for_role
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.integrations.zendesk import service as zendesk
from facemint.integrations.zendesk.orm import AssetKind
from facemint.integrations.zendesk.schemas import ConnectorWrite
from facemint.storage import LocalStorage
from facemint.tenants.orm import Plan, Tenant
from facemint.users.orm import Role, User
from tests.factories import add_abuse_rule, create_tenant, fund, record_abuse_trigger
from tests.jobs.admin_job_factory import queued_job, result_png
from tests.platform.conftest import Caller, MakeCaller

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# A tenant admin's daily grant for its own tenant, paid from its pool.
GRANT = {"name": "daily", "scope": "tenant", "amount": 5, "period": "day", "funding": "tenant_pool"}


def admin_operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) for every /admin/v1 endpoint, included routers expanded."""
    operations = []
    for context in iter_route_contexts(app.routes):
        path = context.path
        if isinstance(context.original_route, APIRoute) and path and path.startswith("/admin/v1"):
            operations += [(method, path) for method in sorted(context.methods or ()) if method != "HEAD"]
    return sorted(operations)


def principal_of(user: User) -> Principal:
    return Principal(
        user_id=user.id,
        email=user.email,
        role=Role(user.role),
        tenant_id=user.tenant_id,
        account_id=user.account_id,
        plan="free",
        scopes=scopes_for_role(user.role),
    )


def problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    if code is not None:
        assert body["code"] == code, body
    return body


@dataclass
class World:
    tenant_a: Tenant
    tenant_b: Tenant
    admin_a: Caller
    member_a: Caller
    admin_b: Caller
    member_b: Caller
    key_b_id: int
    rule_a_id: int
    rule_b_id: int
    trigger_a_id: int
    trigger_b_id: int


@pytest.fixture
def world(client: TestClient, session: Session, redis_client: Redis, make_caller: MakeCaller) -> World:
    # The largest plan's rate limits: the route walk sends every admin operation with the same keys in a minute.
    tenant_a = create_tenant(session, name="tenant-a", plan=Plan.enterprise)
    tenant_b = create_tenant(session, name="tenant-b", plan=Plan.enterprise)
    admin_b = make_caller(Role.tenant_admin, tenant_b)
    member_b = make_caller(Role.member, tenant_b)
    listing = client.get("/admin/v1/api-keys", params={"user_id": member_b.id}, headers=admin_b.headers).json()
    # Each tenant has some history in its audit trail.
    renamed = client.patch(f"/admin/v1/users/{member_b.id}", json={"name": "Bea"}, headers=admin_b.headers)
    assert renamed.status_code == 200, renamed.text
    admin_a = make_caller(Role.tenant_admin, tenant_a)
    member_a = make_caller(Role.member, tenant_a)
    renamed = client.patch(f"/admin/v1/users/{member_a.id}", json={"name": "Al"}, headers=admin_a.headers)
    assert renamed.status_code == 200, renamed.text
    # Each tenant has an abuse rule and a trigger of it to review.
    rule_a = add_abuse_rule(session, redis_client, tenant_id=tenant_a.id, **RULE_PARAMS)
    rule_b = add_abuse_rule(session, redis_client, tenant_id=tenant_b.id, **RULE_PARAMS)
    trigger_a = record_abuse_trigger(session, redis_client, rule=rule_a, user_id=member_a.id)
    trigger_b = record_abuse_trigger(session, redis_client, rule=rule_b, user_id=member_b.id)
    return World(
        tenant_a,
        tenant_b,
        admin_a,
        member_a,
        admin_b,
        member_b,
        listing["items"][0]["id"],
        rule_a.id,
        rule_b.id,
        trigger_a.id,
        trigger_b.id,
    )


RULE = {"kind": "jobs_per_window", "action": "flag", "max_jobs": 100, "window_seconds": 60}
RULE_PARAMS: dict[str, Any] = {
    "kind": RuleKind.jobs_per_window,
    "action": RuleAction.flag,
    "max_jobs": 100,
    "window_seconds": 60,
}


class TestTenantIsolation:
    def test_another_tenants_objects_answer_404(self, client: TestClient, world: World) -> None:
        a, tenant_b = world.admin_a.headers, world.tenant_b.id
        user_b, key_b = world.member_b.id, world.key_b_id
        grant_b = client.post("/admin/v1/grants", json=GRANT, headers=world.admin_b.headers).json()["id"]
        for method, path, body in [
            ("GET", f"/admin/v1/tenants/{tenant_b}", None),
            ("GET", f"/admin/v1/tenants/{tenant_b}/pool", None),
            ("GET", f"/admin/v1/users/{user_b}", None),
            ("PATCH", f"/admin/v1/users/{user_b}", {"name": "pwned"}),
            ("POST", f"/admin/v1/users/{user_b}/freeze", None),
            ("POST", f"/admin/v1/users/{user_b}/unfreeze", None),
            ("GET", f"/admin/v1/api-keys/{key_b}", None),
            ("DELETE", f"/admin/v1/api-keys/{key_b}", None),
            ("POST", "/admin/v1/api-keys", {"user_id": user_b, "name": "x", "scopes": ["balance:read"]}),
            ("GET", f"/admin/v1/users?tenant_id={tenant_b}", None),
            ("GET", f"/admin/v1/api-keys?tenant_id={tenant_b}", None),
            ("GET", f"/admin/v1/balances?tenant_id={tenant_b}", None),
            ("GET", f"/admin/v1/audit-events?tenant_id={tenant_b}", None),
            ("GET", f"/admin/v1/users/{user_b}/balance/alert", None),
            ("PUT", f"/admin/v1/users/{user_b}/balance/alert", {"threshold": 5}),
            ("DELETE", f"/admin/v1/users/{user_b}/balance/alert", None),
            ("GET", f"/admin/v1/tenants/{tenant_b}/pool/alert", None),
            ("PUT", f"/admin/v1/tenants/{tenant_b}/pool/alert", {"threshold": 5}),
            ("DELETE", f"/admin/v1/tenants/{tenant_b}/pool/alert", None),
            ("GET", f"/admin/v1/tenants/{tenant_b}/abuse-rules", None),
            ("POST", f"/admin/v1/tenants/{tenant_b}/abuse-rules", RULE),
            ("GET", f"/admin/v1/tenants/{tenant_b}/abuse-rules/{world.rule_b_id}", None),
            ("PATCH", f"/admin/v1/tenants/{tenant_b}/abuse-rules/{world.rule_b_id}", {"enabled": False}),
            ("DELETE", f"/admin/v1/tenants/{tenant_b}/abuse-rules/{world.rule_b_id}", None),
            # Tenant A's own path, naming B's rule: still not there.
            ("GET", f"/admin/v1/tenants/{world.tenant_a.id}/abuse-rules/{world.rule_b_id}", None),
            ("GET", f"/admin/v1/abuse/triggers?tenant_id={tenant_b}", None),
            ("GET", f"/admin/v1/abuse/triggers/{world.trigger_b_id}", None),
            ("POST", f"/admin/v1/abuse/triggers/{world.trigger_b_id}/resolve", {"unfreeze": True}),
            ("GET", f"/admin/v1/grants/{grant_b}", None),
            ("PATCH", f"/admin/v1/grants/{grant_b}", {"amount": 1}),
            ("GET", f"/admin/v1/grants/{grant_b}/periods", None),
            ("GET", f"/admin/v1/grants?tenant_id={tenant_b}", None),
            ("POST", "/admin/v1/grants", {**GRANT, "tenant_id": tenant_b}),
        ]:
            response = client.request(method, path, json=body, headers=a)
            assert response.status_code == 404, (method, path, response.text)
            problem(response, 404)
            assert "tenant-b" not in response.text
        # Nothing happened to B's objects.
        user = client.get(f"/admin/v1/users/{user_b}", headers=world.admin_b.headers).json()
        assert (user["name"], user["status"]) == ("Bea", "active")
        assert client.get(f"/admin/v1/users/{user_b}/balance/alert", headers=world.admin_b.headers).status_code == 404
        assert client.get(f"/admin/v1/tenants/{tenant_b}/pool/alert", headers=world.admin_b.headers).status_code == 404
        assert client.get(f"/admin/v1/grants/{grant_b}", headers=world.admin_b.headers).json()["amount"] == 5
        assert client.get("/admin/v1/grants", headers=world.admin_b.headers).json()["items"][0]["id"] == grant_b
        assert client.get("/v1/balance", headers=world.member_b.headers).status_code == 200
        rules = client.get(f"/admin/v1/tenants/{tenant_b}/abuse-rules", headers=world.admin_b.headers).json()
        assert [(r["id"], r["enabled"]) for r in rules] == [(world.rule_b_id, True)]
        trigger = client.get(f"/admin/v1/abuse/triggers/{world.trigger_b_id}", headers=world.admin_b.headers).json()
        assert trigger["status"] == "open"

    def test_lists_only_show_the_own_tenant(self, client: TestClient, world: World) -> None:
        a, tenant_a = world.admin_a.headers, world.tenant_a.id
        tenants = client.get("/admin/v1/tenants", headers=a).json()["items"]
        assert [t["id"] for t in tenants] == [tenant_a]
        users = client.get("/admin/v1/users", headers=a).json()["items"]
        assert {u["id"] for u in users} == {world.admin_a.id, world.member_a.id}
        keys = client.get("/admin/v1/api-keys", headers=a).json()["items"]
        assert {k["tenant_id"] for k in keys} == {tenant_a}
        balances = client.get("/admin/v1/balances", headers=a).json()["items"]
        assert {b["user_id"] for b in balances} == {world.admin_a.id, world.member_a.id}
        assert client.get(f"/admin/v1/balances?user_id={world.member_b.id}", headers=a).json()["items"] == []
        events = client.get("/admin/v1/audit-events", headers=a).json()["items"]
        assert events
        assert {e["tenant_id"] for e in events} == {tenant_a}
        assert all(e["target_id"] != str(world.member_b.id) for e in events if e["target_type"] == "user")
        # And B sees only its own.
        events_b = client.get("/admin/v1/audit-events", headers=world.admin_b.headers).json()["items"]
        assert {e["tenant_id"] for e in events_b} == {world.tenant_b.id}
        triggers = client.get("/admin/v1/abuse/triggers", headers=a).json()["items"]
        assert [t["id"] for t in triggers] == [world.trigger_a_id]
        triggers_b = client.get("/admin/v1/abuse/triggers", headers=world.admin_b.headers).json()["items"]
        assert [t["id"] for t in triggers_b] == [world.trigger_b_id]

    def test_cannot_create_users_in_another_tenant(self, client: TestClient, world: World) -> None:
        body = {"email": "intruder@example.test", "role": "member", "tenant_id": world.tenant_b.id}
        problem(client.post("/admin/v1/users", json=body, headers=world.admin_a.headers), 404, "tenant_not_found")
        # Without a tenant_id the user lands in the caller's own tenant.
        created = client.post("/admin/v1/users", json={**body, "tenant_id": None}, headers=world.admin_a.headers).json()
        assert created["tenant_id"] == world.tenant_a.id

    def test_cannot_move_money_in_another_tenant(self, client: TestClient, session: Session, world: World) -> None:
        a = world.admin_a.headers
        recharge = {"user_id": world.member_b.id, "amount": 5, "reason": "x"}
        response = client.post("/admin/v1/recharges", json=recharge, headers={**a, "Idempotency-Key": "r1"})
        problem(response, 404)
        adjustment = {"user_id": world.member_b.id, "amount": 5, "reason": "x"}
        response = client.post("/admin/v1/adjustments", json=adjustment, headers={**a, "Idempotency-Key": "a1"})
        problem(response, 403, "insufficient_scope")
        assert client.get("/v1/balance", headers=world.member_b.headers).json()["balance"] == 0


class TestRouteWalk:
    """Every /admin/v1 operation, each with concrete ids that exist."""

    @pytest.fixture
    def operations(self, app: FastAPI) -> list[tuple[str, str]]:
        operations = admin_operations(app)
        # The walk must see the admin surface, or the checks below would pass on nothing.
        assert len(operations) >= 20
        for expected in [
            ("POST", "/admin/v1/tenants"),
            ("DELETE", "/admin/v1/api-keys/{key_id}"),
            ("POST", "/admin/v1/adjustments"),
            ("POST", "/admin/v1/transactions/{transaction_id}/reversal"),
            ("GET", "/admin/v1/audit-events"),
            ("POST", "/admin/v1/recharges/batch"),
            ("PATCH", "/admin/v1/grants/{grant_id}"),
        ]:
            assert expected in operations
        return operations

    @pytest.fixture
    def ids(
        self,
        client: TestClient,
        session: Session,
        settings: Settings,
        world: World,
        make_caller: MakeCaller,
        tmp_path: Path,
    ) -> dict[str, Any]:
        member = world.member_a
        transaction_id = fund(session, account_id=member.user.account_id, amount=10)
        listing = client.get("/admin/v1/api-keys", params={"user_id": member.id}, headers=world.admin_a.headers)
        fund(session, account_id=world.tenant_a.pool_account_id, amount=10)
        batch = client.post(
            "/admin/v1/recharges/batch",
            params={"reason": "walk"},
            content=f"user_id,amount\n{member.id},1\n",
            headers={**world.admin_a.headers, "Idempotency-Key": "walk", "Content-Type": "text/csv"},
        )
        assert batch.status_code == 201, batch.text
        # An operator's recharge above the approval threshold: held, so the approval routes have an id to walk.
        held = client.post(
            "/admin/v1/recharges",
            json={"user_id": member.id, "amount": 100_001, "reason": "walk"},
            headers={**make_caller(Role.operator).headers, "Idempotency-Key": "walk-approval"},
        )
        assert held.status_code == 202, held.text
        # Low-balance alerts on the member's account and the tenant's pool, so reading them finds one.
        for path in (f"/admin/v1/users/{member.id}/balance/alert", f"/admin/v1/tenants/{world.tenant_a.id}/pool/alert"):
            response = client.put(path, json={"threshold": 5}, headers=world.admin_a.headers)
            assert response.status_code == 200, response.text
        # Tenant A's Zendesk connector and an image of its, for the connector's routes (made as the API makes them).
        context = RequestContext(principal=principal_of(world.admin_a.user), request_id=None, ip="127.0.0.1")
        zendesk.put_connector(
            session,
            context=context,
            settings=settings,
            tenant_id=world.tenant_a.id,
            tenant_scope=None,
            data=ConnectorWrite(
                subdomain="walk",
                api_email="agent@walk.example.test",
                api_token=SecretStr("walk-token"),
                signing_secret=SecretStr("walk-secret"),
                integration_user_id=member.id,
            ),
        )
        asset = zendesk.create_asset(
            session,
            context=context,
            settings=settings,
            storage=LocalStorage(tmp_path),
            tenant_id=world.tenant_a.id,
            tenant_scope=None,
            kind=AssetKind.template,
            name="walk",
            data=result_png(64, 64),
        )
        session.commit()
        grant = client.post("/admin/v1/grants", json=GRANT, headers=world.admin_a.headers)
        assert grant.status_code == 201, grant.text
        return {
            "asset_id": asset.id,
            "tenant_id": world.tenant_a.id,
            "user_id": member.id,
            "key_id": listing.json()["items"][0]["id"],
            "transaction_id": transaction_id,
            "batch_id": batch.json()["batch_id"],
            "approval_id": held.json()["id"],
            "grant_id": grant.json()["id"],
            # A queued job of the member's (its price held on the funded account), for /admin/v1/jobs/{job_id}.
            "job_id": queued_job(session, settings, member.user).public_id,
            "rule_id": world.rule_a_id,
            "trigger_id": world.trigger_a_id,
        }

    def test_without_credentials_every_operation_is_401(
        self, client: TestClient, operations: list[tuple[str, str]], ids: dict[str, Any]
    ) -> None:
        for method, path in operations:
            response = client.request(method, path.format(**ids))
            problem(response, 401, "unauthorized")

    def test_members_get_403_everywhere(
        self, client: TestClient, world: World, operations: list[tuple[str, str]], ids: dict[str, Any]
    ) -> None:
        for method, path in operations:
            response = client.request(method, path.format(**ids), headers=world.member_a.headers)
            assert response.status_code == 403, (method, path, response.text)
            problem(response, 403, "insufficient_scope")

    def test_finance_reads_everything_and_writes_nothing(
        self,
        client: TestClient,
        make_caller: MakeCaller,
        operations: list[tuple[str, str]],
        ids: dict[str, Any],
    ) -> None:
        finance = make_caller(Role.finance)
        writes = [(m, p) for m, p in operations if m in WRITE_METHODS]
        reads = [(m, p) for m, p in operations if m not in WRITE_METHODS]
        assert writes
        assert reads
        for method, path in writes:
            response = client.request(method, path.format(**ids), json={}, headers=finance.headers)
            assert response.status_code == 403, (method, path, response.text)
        for method, path in reads:
            response = client.request(method, path.format(**ids), headers=finance.headers)
            # A signing secret would let finance forge webhooks, and a job's result is a customer's image: the two
            # reads finance does not get.
            expected = 403 if path.endswith(("/webhook-secret", "/thumbnail")) else 200
            assert response.status_code == expected, (method, path, response.text)


class TestStaffRoles:
    @pytest.mark.parametrize("role", [Role.tenant_admin, Role.member, Role.finance])
    def test_only_platform_admins_and_operators_create_tenants(
        self, client: TestClient, session: Session, make_caller: MakeCaller, role: Role
    ) -> None:
        caller = make_caller(role, None if role is Role.finance else create_tenant(session))
        problem(client.post("/admin/v1/tenants", json={"name": "new"}, headers=caller.headers), 403)

    @pytest.mark.parametrize("role", [Role.platform_admin, Role.operator])
    def test_staff_create_tenants(self, client: TestClient, make_caller: MakeCaller, role: Role) -> None:
        caller = make_caller(role)
        response = client.post("/admin/v1/tenants", json={"name": f"by-{role.value}"}, headers=caller.headers)
        assert response.status_code == 201, response.text

    def test_tenant_admins_cannot_change_their_tenant(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        for path, body in [(f"/admin/v1/tenants/{tenant.id}", {"plan": "enterprise"})] + [
            (f"/admin/v1/tenants/{tenant.id}/{action}", None) for action in ("suspend", "activate")
        ]:
            problem(client.request("PATCH" if body else "POST", path, json=body, headers=admin.headers), 403)

    def test_operators_cannot_create_or_promote_platform_admins(
        self, client: TestClient, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        body = {"email": "root@example.test", "role": "platform_admin"}
        problem(client.post("/admin/v1/users", json=body, headers=operator.headers), 403, "forbidden")
        admin = make_caller(Role.platform_admin)
        # Operators are made by platform admins only (tests/platform/test_privilege.py).
        created = client.post(
            "/admin/v1/users", json={"email": "ops2@example.test", "role": "operator"}, headers=admin.headers
        )
        assert created.status_code == 201, created.text
        promote = client.patch(
            f"/admin/v1/users/{created.json()['id']}", json={"role": "platform_admin"}, headers=operator.headers
        )
        problem(promote, 403, "forbidden")
        problem(client.post(f"/admin/v1/users/{admin.id}/freeze", headers=operator.headers), 403, "forbidden")
        assert client.get("/admin/v1/tenants", headers=admin.headers).status_code == 200

    def test_tenant_admins_only_assign_tenant_roles(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        admin = make_caller(Role.tenant_admin, create_tenant(session))
        for role in ("operator", "finance", "platform_admin"):
            body = {"email": f"{role}@example.test", "role": role}
            problem(client.post("/admin/v1/users", json=body, headers=admin.headers), 403)
        body = {"email": "deputy@example.test", "role": "tenant_admin"}
        assert client.post("/admin/v1/users", json=body, headers=admin.headers).status_code == 201
