"""Four eyes on the recurring grants that mint tokens, through HTTP and the workers' scheduler: a platform-funded
grant is held (202, a `grant` approval) until a second operator approves it, and the scheduler grants only approved
terms (nothing while a grant waits; the old terms while a change that lets it mint more waits). The requester never
approves their own (nor straight in SQL); rejection and expiry make nothing; a change that mints no more applies at
once; an approval whose grant changed since is refused. Pool-funded grants are held only by the approval
thresholds. The database refuses a platform grant, or a raise, that no second operator approved."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger.service import get_balance
from facemint.app import create_app
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from facemint.worker.granting import GrantReport, grant_once
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import Caller, MakeCaller
from tests.platform.grant_helpers import (
    APPROVALS,
    GRANTS,
    approved,
    audited,
    created,
    decide,
    held,
    made,
    plan_body,
    problem,
    tenant_body,
)


@dataclass
class World:
    requester: Caller  # an operator
    approver: Caller  # another operator
    admin: Caller  # a platform admin
    tenant: Tenant  # on the free plan
    tenant_admin: Caller
    members: list[User]


@pytest.fixture
def world(session: Session, make_caller: MakeCaller) -> World:
    tenant = create_tenant(session)
    return World(
        requester=make_caller(Role.operator),
        approver=make_caller(Role.operator),
        admin=make_caller(Role.platform_admin),
        tenant=tenant,
        tenant_admin=make_caller(Role.tenant_admin, tenant),
        members=[create_user(session, tenant=tenant, password=None) for _ in range(2)],
    )


def run(session_factory: sessionmaker[Session]) -> GrantReport:
    return grant_once(session_factory, chunk_size=100)


def balance(session: Session, user: User) -> int:
    session.rollback()  # a fresh snapshot: the app and the workers committed in other connections
    return get_balance(session, account_id=user.account_id).balance


def grants_made(session: Session) -> int:
    session.rollback()
    return int(session.execute(text("SELECT count(*) FROM credit_grants")).scalar_one())


def approval_status(session: Session, approval_id: int) -> str:
    session.rollback()
    status: str = session.execute(
        text("SELECT status FROM recharge_approvals WHERE id = :id"), {"id": approval_id}
    ).scalar_one()
    return status


def platform_tenant_grant(world: World, **fields: Any) -> dict[str, Any]:
    return tenant_body(tenant_id=world.tenant.id, funding="platform", **fields)


class TestMakingAPlatformGrant:
    @pytest.mark.parametrize("kind", ["plan", "tenant"])
    def test_it_grants_nothing_until_another_operator_approves_it(
        self,
        client: TestClient,
        session: Session,
        session_factory: sessionmaker[Session],
        world: World,
        kind: str,
    ) -> None:
        body = plan_body(amount=5) if kind == "plan" else platform_tenant_grant(world, amount=5)
        approval = held(client.post(GRANTS, json=body, headers=world.requester.headers))
        # One period at the accounts eligible now: the tenant admin and the two members.
        assert (approval["total_amount"], approval["row_count"]) == (15, 3)
        assert approval["tenant_id"] == (None if kind == "plan" else world.tenant.id)
        assert approval["requested_by_user_id"] == world.requester.id
        detail = client.get(f"{APPROVALS}/{approval['id']}", headers=world.approver.headers).json()["request"]
        assert (detail["change"], detail["held_because"], detail["eligible_accounts"]) == (
            "create",
            "platform_grant",
            3,
        )
        assert (detail["terms"]["amount"], detail["terms"]["funding"]) == (5, "platform")
        assert client.get(GRANTS, headers=world.approver.headers).json()["items"] == []

        assert run(session_factory).granted_accounts == 0
        assert [balance(session, m) for m in world.members] == [0, 0]

        grant = approved(client, world.approver, approval)
        assert (grant["amount"], grant["funding"], grant["enabled"]) == (5, "platform", True)
        report = run(session_factory)
        assert (report.granted_accounts, report.granted_tokens) == (3, 15)
        assert [balance(session, m) for m in world.members] == [5, 5]

        (request,) = audited(session, "recharge.approval.request")
        assert (request["actor_user_id"], request["after"]["held_because"]) == (world.requester.id, "platform_grant")
        (made_event,) = audited(session, "grant.create")
        assert (made_event["actor_user_id"], made_event["target_id"]) == (world.approver.id, str(grant["id"]))
        assert made_event["after"]["approval_id"] == approval["id"]
        assert made_event["after"]["requested_by_user_id"] == world.requester.id

    def test_the_requester_cannot_approve_their_own_but_may_withdraw_it(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        approval = held(client.post(GRANTS, json=plan_body(), headers=world.requester.headers))
        problem(decide(client, world.requester, approval["id"]), 403, "self_approval")
        assert approval_status(session, approval["id"]) == "pending"
        assert grants_made(session) == 0
        withdrawn = decide(client, world.requester, approval["id"], "reject")
        assert withdrawn.json()["status"] == "rejected"

    def test_a_rejected_grant_is_never_made(
        self, client: TestClient, session: Session, session_factory: sessionmaker[Session], world: World
    ) -> None:
        approval = held(client.post(GRANTS, json=plan_body(), headers=world.requester.headers))
        assert decide(client, world.approver, approval["id"], "reject").json()["status"] == "rejected"
        problem(decide(client, world.admin, approval["id"]), 409, "approval_not_pending")
        problem(decide(client, world.admin, approval["id"], "reject"), 409, "approval_not_pending")
        assert grants_made(session) == 0
        assert run(session_factory).granted_accounts == 0

    def test_an_expired_grant_request_cannot_be_approved(
        self, session: Session, settings: Settings, world: World
    ) -> None:
        # model_copy: the setting's own floor (60 s) is for operators, not for a test that waits.
        with TestClient(create_app(settings.model_copy(update={"approval_ttl_seconds": 1}))) as client:
            approval = held(client.post(GRANTS, json=plan_body(), headers=world.requester.headers))
            time.sleep(1.2)
            problem(decide(client, world.approver, approval["id"]), 409, "approval_expired")
        assert approval_status(session, approval["id"]) == "expired"
        assert grants_made(session) == 0

    def test_grant_approvals_are_listed_with_the_others_and_tenant_admins_see_their_tenants(
        self, client: TestClient, world: World, make_caller: MakeCaller
    ) -> None:
        plan = held(client.post(GRANTS, json=plan_body(), headers=world.requester.headers))
        tenant = held(client.post(GRANTS, json=platform_tenant_grant(world), headers=world.requester.headers))

        def listed(caller: Caller, **params: str) -> list[int]:
            response = client.get(APPROVALS, params=params, headers=caller.headers)
            assert response.status_code == 200, response.text
            return [item["id"] for item in response.json()["items"]]

        assert listed(world.approver, kind="grant") == [tenant["id"], plan["id"]]
        assert listed(world.approver, kind="single") == []
        assert listed(make_caller(Role.finance), kind="grant", status="pending") == [tenant["id"], plan["id"]]
        # A plan grant belongs to no tenant; the tenant's own platform grant is its to read, never to decide.
        assert listed(world.tenant_admin) == [tenant["id"]]
        problem(client.get(f"{APPROVALS}/{plan['id']}", headers=world.tenant_admin.headers), 404, "approval_not_found")
        problem(decide(client, world.tenant_admin, tenant["id"]), 403, "insufficient_scope")


class TestChangingAPlatformGrant:
    def test_an_amount_increase_waits_and_the_old_amount_keeps_running(
        self, client: TestClient, session: Session, session_factory: sessionmaker[Session], world: World
    ) -> None:
        grant = made(client, world.requester, world.approver, platform_tenant_grant(world, amount=5))
        path = f"{GRANTS}/{grant['id']}"
        run(session_factory)
        approval = held(client.patch(path, json={"amount": 9}, headers=world.requester.headers))
        assert (approval["total_amount"], approval["row_count"]) == (27, 3)
        detail = client.get(f"{APPROVALS}/{approval['id']}", headers=world.approver.headers).json()["request"]
        assert (detail["change"], detail["grant_id"], detail["changes"]) == ("update", grant["id"], {"amount": 9})
        assert (detail["before"]["amount"], detail["terms"]["amount"]) == (5, 9)
        assert client.get(path, headers=world.requester.headers).json() == grant

        # Someone who joins while the change waits is granted on the old terms.
        joined = create_user(session, tenant=world.tenant, password=None)
        run(session_factory)
        assert balance(session, joined) == 5

        changed = approved(client, world.approver, approval)
        assert changed["amount"] == 9
        later = create_user(session, tenant=world.tenant, password=None)
        run(session_factory)
        assert (balance(session, later), balance(session, joined)) == (9, 5)
        (event,) = audited(session, "grant.update")
        assert (event["actor_user_id"], event["before"]["amount"], event["after"]["amount"]) == (
            world.approver.id,
            5,
            9,
        )
        assert event["after"]["approval_id"] == approval["id"]

    def test_every_change_that_lets_it_mint_more_waits(self, client: TestClient, world: World) -> None:
        now = datetime.now(UTC)
        grant = made(
            client,
            world.requester,
            world.approver,
            platform_tenant_grant(
                world,
                label="vip",
                starts_at=(now - timedelta(days=1)).isoformat(),
                ends_at=(now + timedelta(days=10)).isoformat(),
            ),
        )
        path = f"{GRANTS}/{grant['id']}"
        paused = client.patch(path, json={"enabled": False}, headers=world.requester.headers)
        assert paused.status_code == 200, paused.text  # pausing mints less: at once
        before = paused.json()
        for change in (
            {"amount": 6},
            {"enabled": True},
            {"label": None},  # every user of the tenant
            {"label": "gold"},  # another set of users, maybe larger
            {"starts_at": (now - timedelta(days=2)).isoformat()},
            {"ends_at": (now + timedelta(days=20)).isoformat()},
            {"ends_at": None},
            {"name": "renamed", "amount": 6},  # held whole: the name waits too
        ):
            held(client.patch(path, json=change, headers=world.requester.headers))
            assert client.get(path, headers=world.requester.headers).json() == before, change

    def test_a_change_that_mints_no_more_applies_at_once(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        grant = made(client, world.requester, world.approver, platform_tenant_grant(world, amount=5))
        path = f"{GRANTS}/{grant['id']}"
        soon = (datetime.now(UTC) + timedelta(days=3)).isoformat()
        for change in ({"amount": 3}, {"label": "vip"}, {"ends_at": soon}, {"name": "renamed", "priority": 30}):
            response = client.patch(path, json=change, headers=world.requester.headers)
            assert response.status_code == 200, (change, response.text)
            assert response.json()["approval_id"] == grant["approval_id"]
        assert client.get(path, headers=world.requester.headers).json()["amount"] == 3
        assert len(audited(session, "recharge.approval.request")) == 1  # the grant's own creation

    def test_an_approval_whose_grant_changed_since_is_refused_and_stays_pending(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        grant = made(client, world.requester, world.approver, platform_tenant_grant(world, amount=5, label="vip"))
        path = f"{GRANTS}/{grant['id']}"
        raise_amount = held(client.patch(path, json={"amount": 9}, headers=world.requester.headers))
        widen = held(client.patch(path, json={"label": None}, headers=world.requester.headers))
        assert approved(client, world.approver, raise_amount)["amount"] == 9
        # Approving the second now would give 9 tokens to every user, which nobody saw together.
        body = problem(decide(client, world.approver, widen["id"]), 409, "grant_changed")
        assert body["grant_id"] == grant["id"]
        assert approval_status(session, widen["id"]) == "pending"
        assert client.get(path, headers=world.requester.headers).json()["label"] == "vip"
        assert decide(client, world.approver, widen["id"], "reject").status_code == 200


class TestPoolFundedGrants:
    def test_a_tenant_admins_pool_grants_apply_at_once_within_the_thresholds(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        grant = created(client.post(GRANTS, json=tenant_body(amount=5), headers=world.tenant_admin.headers))
        raised = client.patch(f"{GRANTS}/{grant['id']}", json={"amount": 50}, headers=world.tenant_admin.headers)
        assert (raised.status_code, raised.json()["amount"], raised.json()["approval_id"]) == (200, 50, None)
        assert audited(session, "recharge.approval.request") == []

    def test_a_pool_grant_whose_period_passes_the_batch_threshold_waits_as_a_batch_would(
        self, session: Session, settings: Settings, session_factory: sessionmaker[Session], world: World
    ) -> None:
        fund(session, account_id=world.tenant.pool_account_id, amount=100)
        low = settings.model_copy(update={"approval_threshold_batch_total": 10})
        with TestClient(create_app(low)) as client:
            # 3 accounts x 5 = 15 tokens a period, above 10.
            approval = held(client.post(GRANTS, json=tenant_body(amount=5), headers=world.tenant_admin.headers))
            assert approval["tenant_id"] == world.tenant.id
            detail = client.get(f"{APPROVALS}/{approval['id']}", headers=world.tenant_admin.headers).json()
            assert detail["request"]["held_because"] == "batch_total"
            problem(decide(client, world.tenant_admin, approval["id"]), 403, "insufficient_scope")
            assert run(session_factory).granted_accounts == 0
            grant = approved(client, world.approver, approval)
            assert (grant["funding"], grant["tenant_id"]) == ("tenant_pool", world.tenant.id)
            assert run(session_factory).granted_tokens == 15
            # Lowering it mints less: at once.
            lowered = client.patch(f"{GRANTS}/{grant['id']}", json={"amount": 3}, headers=world.tenant_admin.headers)
            assert lowered.status_code == 200, lowered.text
        assert [balance(session, m) for m in world.members] == [5, 5]


class TestTheDatabaseKeepsTheRules:
    def test_a_platform_grant_no_second_operator_approved_is_refused_at_commit(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        def refused(statement: str, **params: Any) -> None:
            session.execute(text(statement), params)
            with pytest.raises(DBAPIError, match="approv|never change"):
                session.commit()
            session.rollback()

        refused(
            "INSERT INTO credit_grants (name, scope, plan, amount, period, funding) "
            "VALUES ('sneaky', 'plan', 'free', 5, 'day', 'platform')"
        )
        now = datetime.now(UTC)
        dates = {"starts_at": (now - timedelta(days=1)).isoformat(), "ends_at": (now + timedelta(days=10)).isoformat()}
        grant = made(
            client, world.requester, world.approver, platform_tenant_grant(world, amount=5, label="vip", **dates)
        )
        first_approval = grant["approval_id"]
        changed = approved(
            client,
            world.approver,
            held(client.patch(f"{GRANTS}/{grant['id']}", json={"amount": 9}, headers=world.requester.headers)),
        )
        assert client.patch(f"{GRANTS}/{grant['id']}", json={"amount": 4}, headers=world.requester.headers).is_success
        pending = held(client.patch(f"{GRANTS}/{grant['id']}", json={"amount": 8}, headers=world.requester.headers))
        by_id = "WHERE id = :id"
        for raise_ in ("amount = 100", "label = NULL", "ends_at = NULL", "starts_at = starts_at - interval '1 day'"):
            refused(f"UPDATE credit_grants SET {raise_} {by_id}", id=grant["id"])
        # Not with an approval still pending, nor one decided in another transaction (even within its terms).
        refused(f"UPDATE credit_grants SET amount = 8, approval_id = :a {by_id}", id=grant["id"], a=pending["id"])
        refused(f"UPDATE credit_grants SET amount = 5, approval_id = :a {by_id}", id=grant["id"], a=first_approval)
        # What fixes a grant's meaning never changes, whatever pays for it.
        refused(f"UPDATE credit_grants SET funding = 'tenant_pool' {by_id}", id=grant["id"])
        pooled = created(client.post(GRANTS, json=tenant_body(), headers=world.tenant_admin.headers))
        refused(f"UPDATE credit_grants SET funding = 'platform' {by_id}", id=pooled["id"])
        # Minting less needs nobody.
        session.execute(text(f"UPDATE credit_grants SET amount = 1, enabled = false {by_id}"), {"id": grant["id"]})
        session.commit()
        assert changed["approval_id"] != first_approval

    def test_the_requester_cannot_approve_a_grant_request_even_in_sql(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        approval = held(client.post(GRANTS, json=plan_body(), headers=world.requester.headers))
        with pytest.raises(DBAPIError):
            session.execute(
                text(
                    "UPDATE recharge_approvals SET status = 'approved', decided_at = now(), "
                    "decided_by_user_id = requested_by_user_id WHERE id = :id"
                ),
                {"id": approval["id"]},
            )
        session.rollback()
        assert approval_status(session, approval["id"]) == "pending"
