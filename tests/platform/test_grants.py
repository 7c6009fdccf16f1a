"""/admin/v1/grants and user labels through the API: who may make and change which grants (plan and platform-funded
grants are staff's; a tenant admin's are its own tenant's, paid from its pool), what tenant roles see, bad input as
422 problems, the audit trail, and a grant's periods after the workers ran it. (Four eyes on the grants that mint
tokens: test_grant_approvals.py; user labels, which tenant grants select on: test_user_labels.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from facemint.users.orm import Role
from facemint.worker.granting import grant_once
from tests.factories import create_tenant, fund
from tests.platform.conftest import MakeCaller
from tests.platform.grant_helpers import (
    GRANTS,
    audited,
    created,
    made,
    plan_body,
    problem,
    tenant_body,
)


class TestWhoMayMakeWhich:
    @pytest.mark.parametrize("role", [Role.platform_admin, Role.operator])
    def test_staff_make_plan_grants_and_platform_funded_tenant_grants(
        self, client: TestClient, session: Session, make_caller: MakeCaller, role: Role
    ) -> None:
        staff, approver = make_caller(role), make_caller(Role.operator)
        tenant = create_tenant(session)
        plan = made(client, staff, approver, plan_body())
        assert (plan["scope"], plan["plan"], plan["tenant_id"], plan["priority"], plan["enabled"]) == (
            "plan",
            "free",
            None,
            10,
            True,
        )
        issued = made(
            client,
            staff,
            approver,
            tenant_body(tenant_id=tenant.id, funding="platform", label="VIP", priority=20),
        )
        assert (issued["tenant_id"], issued["label"], issued["priority"]) == (tenant.id, "vip", 20)
        events = audited(session, "grant.create")
        # Made by the requester (as the journal names actors), on the approver's approval.
        key_id = session.execute(text("SELECT id FROM api_keys WHERE user_id = :u"), {"u": staff.id}).scalar_one()
        assert plan["created_by"] == issued["created_by"] == f"key:{key_id}"
        assert [(e["target_id"], e["tenant_id"]) for e in events] == [
            (str(plan["id"]), None),
            (str(issued["id"]), tenant.id),
        ]
        assert events[1]["after"]["funding"] == "platform"
        assert events[1]["after"]["requested_by_user_id"] == staff.id

    def test_a_tenant_admin_makes_its_own_tenants_pool_funded_grants_only(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant, other = create_tenant(session), create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        own = created(client.post(GRANTS, json=tenant_body(label="vip"), headers=admin.headers))
        assert (own["tenant_id"], own["funding"]) == (tenant.id, "tenant_pool")
        assert own["created_by"].startswith("key:")  # the caller's key, as the journal names actors
        problem(client.post(GRANTS, json=plan_body(), headers=admin.headers), 403, "forbidden")
        problem(client.post(GRANTS, json=tenant_body(funding="platform"), headers=admin.headers), 403, "forbidden")
        problem(
            client.post(GRANTS, json=tenant_body(tenant_id=other.id), headers=admin.headers), 404, "tenant_not_found"
        )
        assert [e["target_id"] for e in audited(session, "grant.create")] == [str(own["id"])]

    @pytest.mark.parametrize("role", [Role.finance, Role.member])
    def test_finance_and_members_make_no_grants(
        self, client: TestClient, session: Session, make_caller: MakeCaller, role: Role
    ) -> None:
        caller = make_caller(role, None if role is Role.finance else create_tenant(session))
        problem(client.post(GRANTS, json=plan_body(), headers=caller.headers), 403, "insufficient_scope")

    def test_a_tenant_admin_changes_its_pool_funded_grants_not_the_platforms(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin, operator = make_caller(Role.tenant_admin, tenant), make_caller(Role.operator)
        own = created(client.post(GRANTS, json=tenant_body(), headers=admin.headers))
        issued = made(
            client, operator, make_caller(Role.operator), tenant_body(tenant_id=tenant.id, funding="platform")
        )
        changed = client.patch(
            f"{GRANTS}/{own['id']}", json={"amount": 7, "label": "vip", "enabled": False}, headers=admin.headers
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["amount"], changed.json()["label"], changed.json()["enabled"]) == (7, "vip", False)
        problem(client.patch(f"{GRANTS}/{issued['id']}", json={"amount": 7}, headers=admin.headers), 403, "forbidden")
        # It still reads its tenant's platform-funded grant.
        assert client.get(f"{GRANTS}/{issued['id']}", headers=admin.headers).status_code == 200
        (event,) = audited(session, "grant.update")
        assert (event["before"]["amount"], event["after"]["amount"], event["after"]["label"]) == (5, 7, "vip")
        # Clearing the label: every user of the tenant again.
        cleared = client.patch(f"{GRANTS}/{own['id']}", json={"label": None}, headers=admin.headers)
        assert cleared.json()["label"] is None


class TestWhatTenantRolesSee:
    def test_lists_show_staff_every_grant_and_a_tenant_admin_its_own_tenants(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant, other = create_tenant(session), create_tenant(session)
        operator, finance = make_caller(Role.operator), make_caller(Role.finance)
        admin, other_admin = make_caller(Role.tenant_admin, tenant), make_caller(Role.tenant_admin, other)
        plan = made(client, operator, make_caller(Role.operator), plan_body())
        own = created(client.post(GRANTS, json=tenant_body(), headers=admin.headers))
        theirs = created(client.post(GRANTS, json=tenant_body(), headers=other_admin.headers))
        ids = [g["id"] for g in client.get(GRANTS, headers=admin.headers).json()["items"]]
        assert ids == [own["id"]]
        for path in (f"{GRANTS}/{plan['id']}", f"{GRANTS}/{theirs['id']}", f"{GRANTS}/{theirs['id']}/periods"):
            problem(client.get(path, headers=admin.headers), 404, "grant_not_found")
        problem(
            client.patch(f"{GRANTS}/{theirs['id']}", json={"amount": 1}, headers=admin.headers), 404, "grant_not_found"
        )
        problem(client.get(GRANTS, params={"tenant_id": other.id}, headers=admin.headers), 404, "not_found")
        listed = client.get(GRANTS, headers=finance.headers).json()["items"]
        assert [g["id"] for g in listed] == [theirs["id"], own["id"], plan["id"]]
        plans_only = client.get(GRANTS, params={"scope": "plan"}, headers=finance.headers).json()["items"]
        assert [g["id"] for g in plans_only] == [plan["id"]]
        of_other = client.get(GRANTS, params={"tenant_id": other.id}, headers=finance.headers).json()["items"]
        assert [g["id"] for g in of_other] == [theirs["id"]]


class TestBadInput:
    @pytest.mark.parametrize(
        "body",
        [
            plan_body(plan=None),
            plan_body(label="vip"),
            plan_body(tenant_id=1),
            plan_body(funding="tenant_pool"),
            tenant_body(plan="free"),
            plan_body(amount=0),
            plan_body(amount=-5),
            plan_body(priority=101),
            plan_body(period="year"),
            plan_body(scope="everyone"),
            plan_body(name="  "),
            tenant_body(label="VIP!"),
            tenant_body(label="-vip"),
            plan_body(starts_at="2026-12-05T10:00:00"),  # no time zone
            plan_body(starts_at="2026-12-05T10:00:00Z", ends_at="2026-12-05T09:00:00Z"),
            plan_body(balance=5),
        ],
        ids=lambda body: ",".join(f"{k}={v}" for k, v in body.items() if k not in ("name", "period")),
    )
    def test_an_invalid_grant_is_422(self, client: TestClient, make_caller: MakeCaller, body: dict[str, Any]) -> None:
        problem(client.post(GRANTS, json=body, headers=make_caller(Role.operator).headers), 422, "validation_error")

    def test_what_only_the_service_knows_is_422_invalid_grant(
        self, client: TestClient, session: Session, make_caller: MakeCaller, settings: Any
    ) -> None:
        operator = make_caller(Role.operator)
        # Staff name the tenant of a tenant grant.
        problem(client.post(GRANTS, json=tenant_body(), headers=operator.headers), 422, "invalid_grant")
        body = problem(
            client.post(GRANTS, json=plan_body(amount=settings.recharge_max_amount + 1), headers=operator.headers),
            422,
            "invalid_grant",
        )
        assert body["ceiling"] == settings.recharge_max_amount
        problem(
            client.post(GRANTS, json=plan_body(ends_at="2020-01-01T00:00:00Z"), headers=operator.headers),
            422,
            "invalid_grant",
        )
        grant = made(client, operator, make_caller(Role.operator), plan_body())
        path = f"{GRANTS}/{grant['id']}"
        problem(client.patch(path, json={"label": "vip"}, headers=operator.headers), 422, "invalid_grant")
        problem(client.patch(path, json={"amount": None}, headers=operator.headers), 422, "invalid_grant")
        problem(
            client.patch(path, json={"ends_at": grant["starts_at"]}, headers=operator.headers), 422, "invalid_grant"
        )
        for fixed in ({"period": "week"}, {"scope": "tenant"}, {"funding": "tenant_pool"}, {"plan": "pro"}):
            problem(client.patch(path, json=fixed, headers=operator.headers), 422, "validation_error")
        assert client.get(path, headers=operator.headers).json() == grant
        assert audited(session, "grant.update") == []


class TestPeriods:
    def test_a_grants_periods_say_what_the_workers_granted_and_what_the_pool_lacked(
        self, client: TestClient, session: Session, session_factory: sessionmaker[Session], make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        member = make_caller(Role.member, tenant)
        grant = created(client.post(GRANTS, json=tenant_body(amount=10), headers=admin.headers))
        path = f"{GRANTS}/{grant['id']}/periods"
        assert client.get(path, headers=admin.headers).json() == {"items": [], "next_cursor": None}
        fund(session, account_id=tenant.pool_account_id, amount=15)
        grant_once(session_factory, chunk_size=100)
        (short,) = client.get(path, headers=admin.headers).json()["items"]
        assert (short["granted_accounts"], short["shortfall_needed"], short["shortfall_available"]) == (0, 20, 15)
        fund(session, account_id=tenant.pool_account_id, amount=5)
        grant_once(session_factory, chunk_size=100)
        (paid,) = client.get(path, headers=admin.headers).json()["items"]
        assert (paid["period_start"], paid["granted_accounts"], paid["granted_tokens"], paid["shortfall_needed"]) == (
            short["period_start"],
            2,
            20,
            None,
        )
        assert client.get("/v1/balance", headers=member.headers).json()["available"] == 10
