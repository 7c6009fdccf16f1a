"""Four-eyes approval of large recharges, through HTTP: what is held (and that nothing moves while it is), who
may approve (never the requester), approving applies exactly once (also when two approve at the same moment),
rejection and expiry apply nothing, replays of the held request, tenant visibility and the audit trail."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from facemint.app import create_app
from facemint.approvals import service as approvals
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import create_tenant, create_user, issue_key
from tests.platform.recharge_helpers import (
    APPROVALS,
    SINGLE,
    Actor,
    assert_problem,
    audit_events,
    balance_of,
    count,
    csv_body,
    freeze,
    fund_pool,
    post_batch,
    recharge_transactions,
    staff,
    tenant_admin,
)
from tests.platform.recharge_helpers import approve as _approve
from tests.platform.recharge_helpers import held as _held
from tests.platform.recharge_helpers import reject as _reject

THRESHOLD = 100_000  # the default approval_threshold_amount
BATCH_TOTAL = 1_000_000  # the default approval_threshold_batch_total


@dataclass
class World:
    requester: Actor  # an operator
    approver: Actor  # another operator
    admin: Actor  # a platform admin
    finance: Actor
    tenant: Tenant
    tenant_admin: Actor
    member: Actor
    other_tenant: Tenant
    other_admin: Actor  # tenant admin of `other_tenant`
    users: list[User]  # members of `tenant`


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def world(session: Session, settings: Settings) -> World:
    tenant, other = create_tenant(session), create_tenant(session)
    member = create_user(session, tenant=tenant, role=Role.member, password=None)
    return World(
        requester=staff(session, settings, Role.operator),
        approver=staff(session, settings, Role.operator),
        admin=staff(session, settings, Role.platform_admin),
        finance=staff(session, settings, Role.finance),
        tenant=tenant,
        tenant_admin=tenant_admin(session, settings, tenant),
        member=Actor(member, issue_key(session, settings, member)),
        other_tenant=other,
        other_admin=tenant_admin(session, settings, other),
        users=[create_user(session, tenant=tenant, password=None) for _ in range(11)],
    )


def _recharge(client: TestClient, actor: Actor, user: User, amount: int, key: str = "big-1") -> httpx.Response:
    return client.post(
        SINGLE, json={"user_id": user.id, "amount": amount, "reason": "big customer"}, headers=actor.headers(key)
    )


def _get(client: TestClient, actor: Actor, approval_id: int) -> httpx.Response:
    return client.get(f"{APPROVALS}/{approval_id}", headers=actor.headers())


def _approval_row(session: Session, approval_id: int) -> Any:
    session.rollback()  # a fresh snapshot: the app committed in another connection
    return session.execute(text("SELECT * FROM recharge_approvals WHERE id = :id"), {"id": approval_id}).one()


class TestWhatIsHeld:
    def test_recharges_up_to_the_thresholds_apply_directly(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        u0, *rest = world.users
        assert _recharge(client, world.requester, u0, THRESHOLD).status_code == 201
        # Ten rows of the per-row threshold: exactly the batch threshold. Sent by another operator: on top of the
        # recharge above, the requester's own 24-hour total would hold it (tests/platform/test_four_eyes_limits.py).
        csv = csv_body("user_id,amount", *(f"{u.id},{THRESHOLD}" for u in rest[:10]))
        response = post_batch(client, world.admin, csv, key="b-ok")
        assert response.status_code == 201, response.text
        assert response.json()["total_amount"] == BATCH_TOTAL
        assert balance_of(session, u0.account_id) == THRESHOLD
        assert count(session, "recharge_approvals") == 0

    def test_a_large_single_recharge_is_held_and_nothing_moves(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        body = _held(_recharge(client, world.requester, user, THRESHOLD + 1))
        assert (body["kind"], body["total_amount"], body["row_count"], body["tenant_id"]) == (
            "single",
            THRESHOLD + 1,
            1,
            world.tenant.id,
        )
        assert body["requested_by_user_id"] == world.requester.user.id
        assert body["result"] is None
        assert body["decided_at"] is None
        row = _approval_row(session, body["id"])
        assert 86_399 <= (row.expires_at - row.created_at).total_seconds() <= 86_401
        assert balance_of(session, user.account_id) == 0
        assert recharge_transactions(session) == 0
        [event] = audit_events(session, "recharge.approval.request")
        assert (event.actor_user_id, event.target_type, event.target_id) == (
            world.requester.user.id,
            "recharge_approval",
            str(body["id"]),
        )
        detail = _get(client, world.approver, body["id"]).json()
        assert detail["request"]["body"]["amount"] == THRESHOLD + 1
        assert detail["request"]["target"] == {"user_id": user.id, "email": user.email}

    def test_a_batch_with_one_row_over_the_threshold_is_held(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        u1, u2 = world.users[:2]
        csv = csv_body("user_id,amount", f"{u1.id},5", f"{u2.id},{THRESHOLD + 1}")
        body = _held(post_batch(client, world.requester, csv, key="b-row", mode="partial"))
        assert (body["kind"], body["total_amount"], body["row_count"]) == ("batch", THRESHOLD + 6, 2)
        assert [balance_of(session, u.account_id) for u in (u1, u2)] == [0, 0]
        assert count(session, "recharge_batches") == 0
        assert recharge_transactions(session) == 0

    def test_a_batch_over_the_total_threshold_is_held(self, client: TestClient, session: Session, world: World) -> None:
        csv = csv_body("user_id,amount", *(f"{u.id},{THRESHOLD}" for u in world.users))  # 11 rows: 1,100,000
        body = _held(post_batch(client, world.requester, csv, key="b-total"))
        assert body["total_amount"] == 11 * THRESHOLD
        assert {balance_of(session, u.account_id) for u in world.users} == {0}
        assert count(session, "recharge_batches") == 0

    def test_dry_runs_are_never_held_but_say_a_real_run_would_be(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        u1, u2 = world.users[:2]
        big = csv_body("user_id,amount", f"{u1.id},{THRESHOLD + 1}")
        response = post_batch(client, world.requester, big, key="dry", dry_run=True)
        assert response.status_code == 200, response.text
        assert (response.json()["approval_required"], response.json()["total_amount"]) == (True, THRESHOLD + 1)
        small = post_batch(client, world.requester, csv_body("user_id,amount", f"{u2.id},5"), key="dry2", dry_run=True)
        assert small.json()["approval_required"] is False
        assert count(session, "recharge_approvals") == 0
        assert balance_of(session, u1.account_id) == 0

    def test_a_tenant_admins_large_recharge_from_its_pool_is_held_too(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        fund_pool(session, world.tenant, 3 * THRESHOLD)
        user = world.users[0]
        body = _held(_recharge(client, world.tenant_admin, user, 2 * THRESHOLD))
        assert body["tenant_id"] == world.tenant.id
        assert balance_of(session, world.tenant.pool_account_id) == 3 * THRESHOLD
        # Something the pool could never cover is refused now rather than held for nothing.
        response = _recharge(client, world.tenant_admin, user, 4 * THRESHOLD, key="too-big")
        assert_problem(response, 402, "insufficient_tokens")
        # A platform operator approves: the tokens come from the pool, as the tenant admin asked.
        approved = _approve(client, world.approver, body["id"])
        assert approved.status_code == 200, approved.text
        assert balance_of(session, world.tenant.pool_account_id) == THRESHOLD
        assert balance_of(session, user.account_id) == 2 * THRESHOLD


class TestApproving:
    def test_the_requester_cannot_approve_their_own_recharge(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        approval = _held(_recharge(client, world.requester, world.users[0], THRESHOLD + 1))
        assert_problem(_approve(client, world.requester, approval["id"]), 403, "self_approval")
        assert _approval_row(session, approval["id"]).status == "pending"
        assert balance_of(session, world.users[0].account_id) == 0

    def test_another_operator_approves_and_it_applies_exactly_once(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        request = {"user_id": user.id, "amount": THRESHOLD + 1, "reason": "big customer"}
        approval = _held(client.post(SINGLE, json=request, headers=world.requester.headers("big-1")))
        response = _approve(client, world.approver, approval["id"], note="checked the contract")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["decided_by_user_id"], body["decision_note"]) == (
            "approved",
            world.approver.user.id,
            "checked the contract",
        )
        transaction_id = body["result"]["transaction_id"]
        assert balance_of(session, user.account_id) == THRESHOLD + 1
        txn = session.execute(
            text("SELECT idempotency_key, actor, reason FROM ledger_transactions WHERE id = :id"),
            {"id": transaction_id},
        ).one()
        # Applied as the requester asked (the actor is the requester's key); the key names the approval.
        assert (txn.idempotency_key, txn.reason) == (f"approval:{approval['id']}", "big customer")
        assert txn.actor == f"key:{approval['requested_by_api_key_id']}"
        assert _approval_row(session, approval["id"]).transaction_id == transaction_id

        # Approving again posts nothing.
        assert_problem(_approve(client, world.admin, approval["id"]), 409, "approval_not_pending")
        assert balance_of(session, user.account_id) == THRESHOLD + 1
        assert recharge_transactions(session) == 1

        # The original request, replayed, now answers with the applied recharge.
        replay = client.post(SINGLE, json=request, headers=world.requester.headers("big-1"))
        assert replay.status_code == 200, replay.text
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert (replay.json()["transaction_id"], replay.json()["balance"]) == (transaction_id, THRESHOLD + 1)
        assert recharge_transactions(session) == 1

        [approved] = audit_events(session, "recharge.approval.approve")
        assert (approved.actor_user_id, approved.after["result"]["transaction_id"]) == (
            world.approver.user.id,
            transaction_id,
        )
        [created] = audit_events(session, "recharge.create")
        assert (created.target_id, created.after["approval_id"]) == (str(transaction_id), approval["id"])

    def test_an_approved_batch_applies_once_and_links_both_ways(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        u1, u2 = world.users[:2]
        csv = csv_body("user_id,amount,reference", f"{u1.id},{THRESHOLD + 1},inv-1", f"{u2.id},7,inv-2")
        approval = _held(post_batch(client, world.requester, csv, key="b-1", reason="quarterly"))
        response = _approve(client, world.approver, approval["id"])
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert (result["applied"], result["total_amount"], result["approval_id"]) == (2, THRESHOLD + 8, approval["id"])
        assert [balance_of(session, u.account_id) for u in (u1, u2)] == [THRESHOLD + 1, 7]
        row = _approval_row(session, approval["id"])
        assert (row.batch_id, row.transaction_id) == (result["batch_id"], result["transaction_id"])
        batch = client.get(f"/admin/v1/recharges/batches/{result['batch_id']}", headers=world.finance.headers())
        assert batch.status_code == 200, batch.text
        assert (batch.json()["reason"], batch.json()["applied_count"]) == ("quarterly", 2)
        references = session.execute(
            text("SELECT reference FROM ledger_entries WHERE transaction_id = :id AND row_no IS NOT NULL ORDER BY 1"),
            {"id": result["transaction_id"]},
        ).scalars()
        assert list(references) == ["inv-1", "inv-2"]

        assert_problem(_approve(client, world.admin, approval["id"]), 409, "approval_not_pending")
        replay = post_batch(client, world.requester, csv, key="b-1", reason="quarterly")
        assert replay.status_code == 200, replay.text
        assert replay.json()["batch_id"] == result["batch_id"]
        assert count(session, "recharge_batches") == 1
        assert recharge_transactions(session) == 1
        [event] = audit_events(session, "recharge.batch")
        assert event.after["approval_id"] == approval["id"]

    def test_two_concurrent_approvals_apply_once(self, client: TestClient, session: Session, world: World) -> None:
        user = world.users[0]
        approval = _held(_recharge(client, world.requester, user, THRESHOLD + 1))
        approvers = [world.approver, world.admin, world.approver, world.admin]
        barrier = threading.Barrier(len(approvers))

        def send(actor: Actor) -> httpx.Response:
            barrier.wait(timeout=30)
            return _approve(client, actor, approval["id"])

        with ThreadPoolExecutor(max_workers=len(approvers)) as pool:
            responses = list(pool.map(send, approvers))
        assert sorted(r.status_code for r in responses) == [200, 409, 409, 409], [r.text for r in responses]
        assert {r.json()["code"] for r in responses if r.status_code == 409} == {"approval_not_pending"}
        assert balance_of(session, user.account_id) == THRESHOLD + 1
        assert recharge_transactions(session) == 1
        assert len(audit_events(session, "recharge.approval.approve")) == 1

    def test_a_failed_application_leaves_the_approval_pending(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        approval = _held(_recharge(client, world.requester, user, THRESHOLD + 1))
        freeze(session, user)
        assert_problem(_approve(client, world.approver, approval["id"]), 422, "user_frozen")
        assert _approval_row(session, approval["id"]).status == "pending"
        assert recharge_transactions(session) == 0
        assert _reject(client, world.approver, approval["id"], note="frozen").json()["status"] == "rejected"

    def test_the_recharge_log_shows_which_approval_applied_a_recharge(self, client: TestClient, world: World) -> None:
        user = world.users[0]
        approval = _held(_recharge(client, world.requester, user, THRESHOLD + 1))
        assert _approve(client, world.approver, approval["id"]).status_code == 200
        small = client.post(
            SINGLE, json={"user_id": user.id, "amount": 5, "reason": "small"}, headers=world.requester.headers("s-1")
        )
        assert small.status_code == 201, small.text
        log = client.get(
            "/admin/v1/finance/recharges", params={"user_id": user.id}, headers=world.finance.headers("read")
        )
        assert log.status_code == 200, log.text
        rows = {row["amount"]: row for row in log.json()["items"]}
        assert (rows[THRESHOLD + 1]["approval_id"], rows[THRESHOLD + 1]["approved_by_user_id"]) == (
            approval["id"],
            world.approver.user.id,
        )
        assert (rows[5]["approval_id"], rows[5]["approved_by_user_id"]) == (None, None)


class TestRejectionAndExpiry:
    def test_rejected_applies_nothing_and_cannot_be_approved(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        approval = _held(_recharge(client, world.requester, user, THRESHOLD + 1))
        response = _reject(client, world.approver, approval["id"], note="wrong amount")
        assert response.status_code == 200, response.text
        assert (response.json()["status"], response.json()["decision_note"]) == ("rejected", "wrong amount")
        body = assert_problem(_approve(client, world.admin, approval["id"]), 409, "approval_not_pending")
        assert body["approval_status"] == "rejected"
        assert balance_of(session, user.account_id) == 0
        assert recharge_transactions(session) == 0
        # The held request, replayed, answers with its (rejected) approval and still applies nothing.
        replay = _recharge(client, world.requester, user, THRESHOLD + 1)
        assert (replay.status_code, replay.json()["status"]) == (202, "rejected")
        assert balance_of(session, user.account_id) == 0
        assert len(audit_events(session, "recharge.approval.reject")) == 1

    def test_the_requester_may_withdraw_by_rejecting(self, client: TestClient, world: World) -> None:
        approval = _held(_recharge(client, world.requester, world.users[0], THRESHOLD + 1))
        assert _reject(client, world.requester, approval["id"]).json()["status"] == "rejected"

    def test_an_expired_approval_cannot_be_approved(
        self, session: Session, settings: Settings, session_factory: sessionmaker[Session], world: World
    ) -> None:
        # model_copy: the setting's own floor (60 s) is for operators, not for a test that waits.
        short = settings.model_copy(update={"approval_ttl_seconds": 1})
        with TestClient(create_app(short)) as client:
            user = world.users[0]
            first = _held(_recharge(client, world.requester, user, THRESHOLD + 1, key="e-1"))
            second = _held(_recharge(client, world.requester, user, THRESHOLD + 2, key="e-2"))
            third = _held(_recharge(client, world.requester, user, THRESHOLD + 3, key="e-3"))
            time.sleep(1.2)
            body = assert_problem(_approve(client, world.approver, first["id"]), 409, "approval_expired")
            assert body["approval_id"] == first["id"]
            # Refused, but recorded: the approval is marked expired, with its audit event.
            assert _approval_row(session, first["id"]).status == "expired"
            assert _get(client, world.approver, second["id"]).json()["status"] == "expired"  # lazily, on read
            assert_problem(_approve(client, world.approver, second["id"]), 409, "approval_expired")
            # The periodic sweep expires the rest, once.
            with session_factory() as sweep:
                assert approvals.expire_due(sweep) == 1
                sweep.commit()
                assert approvals.expire_due(sweep) == 0
            assert _approval_row(session, third["id"]).status == "expired"
            assert_problem(_reject(client, world.approver, third["id"]), 409, "approval_expired")
            replay = _recharge(client, world.requester, user, THRESHOLD + 1, key="e-1")
            assert (replay.status_code, replay.json()["status"]) == (202, "expired")
        assert balance_of(session, user.account_id) == 0
        assert recharge_transactions(session) == 0
        expired = audit_events(session, "recharge.approval.expire")
        assert sorted(int(e.target_id) for e in expired) == sorted([first["id"], second["id"], third["id"]])


class TestReplays:
    def test_the_same_key_replays_the_pending_approval(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        first = _held(_recharge(client, world.requester, user, THRESHOLD + 1))
        again = _recharge(client, world.requester, user, THRESHOLD + 1)
        assert again.status_code == 202
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first["id"]
        assert_problem(_recharge(client, world.requester, user, THRESHOLD + 2), 409, "idempotency_key_reused")
        # Another key is another request (and another approval).
        assert _held(_recharge(client, world.requester, user, THRESHOLD + 1, key="big-2"))["id"] != first["id"]
        assert count(session, "recharge_approvals") == 2
        assert len(audit_events(session, "recharge.approval.request")) == 2

    def test_the_same_key_replays_a_pending_batch(self, client: TestClient, session: Session, world: World) -> None:
        csv = csv_body("user_id,amount", f"{world.users[0].id},{THRESHOLD + 1}")
        first = _held(post_batch(client, world.requester, csv, key="b-r"))
        again = post_batch(client, world.requester, csv, key="b-r")
        assert (again.status_code, again.json()["id"]) == (202, first["id"])
        other = csv_body("user_id,amount", f"{world.users[0].id},{THRESHOLD + 2}")
        assert_problem(post_batch(client, world.requester, other, key="b-r"), 409, "idempotency_key_reused")
        assert count(session, "recharge_approvals") == 1


class TestWhoSeesAndDecides:
    @pytest.mark.parametrize("who", ["member", "finance", "tenant_admin"])
    def test_only_platform_staff_decide(self, client: TestClient, session: Session, world: World, who: str) -> None:
        approval = _held(_recharge(client, world.requester, world.users[0], THRESHOLD + 1))
        actor: Actor = getattr(world, who)
        assert_problem(_approve(client, actor, approval["id"]), 403, "insufficient_scope")
        assert_problem(_reject(client, actor, approval["id"]), 403, "insufficient_scope")
        assert _approval_row(session, approval["id"]).status == "pending"

    def test_tenant_admins_see_only_their_tenants_approvals(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        other_user = create_user(session, tenant=world.other_tenant, password=None)
        mine = _held(_recharge(client, world.requester, world.users[0], THRESHOLD + 1, key="a"))
        theirs = _held(_recharge(client, world.requester, other_user, THRESHOLD + 1, key="b"))
        staff_batch = _held(
            post_batch(client, world.requester, csv_body("user_id,amount", f"{other_user.id},{THRESHOLD + 1}"), key="c")
        )
        listing = client.get(APPROVALS, headers=world.tenant_admin.headers()).json()
        assert [a["id"] for a in listing["items"]] == [mine["id"]]
        assert _get(client, world.tenant_admin, mine["id"]).status_code == 200
        for hidden in (theirs, staff_batch):
            assert_problem(_get(client, world.tenant_admin, hidden["id"]), 404, "approval_not_found")
        assert_problem(
            client.get(APPROVALS, params={"tenant_id": world.other_tenant.id}, headers=world.tenant_admin.headers()),
            404,
            "not_found",
        )
        # Staff see everything, filter by tenant and status, and page with the cursor.
        everything = client.get(APPROVALS, headers=world.finance.headers()).json()
        assert [a["id"] for a in everything["items"]] == [staff_batch["id"], theirs["id"], mine["id"]]
        by_tenant = client.get(APPROVALS, params={"tenant_id": world.other_tenant.id}, headers=world.admin.headers())
        assert [a["id"] for a in by_tenant.json()["items"]] == [theirs["id"]]
        _reject(client, world.approver, theirs["id"])
        pending = client.get(APPROVALS, params={"status": "pending"}, headers=world.admin.headers()).json()
        assert [a["id"] for a in pending["items"]] == [staff_batch["id"], mine["id"]]
        page = client.get(APPROVALS, params={"limit": 2}, headers=world.admin.headers()).json()
        rest = client.get(APPROVALS, params={"cursor": page["next_cursor"]}, headers=world.admin.headers()).json()
        assert [a["id"] for a in page["items"] + rest["items"]] == [staff_batch["id"], theirs["id"], mine["id"]]
        # A staff batch's rows are shown to staff only.
        assert "first_rows" in _get(client, world.admin, staff_batch["id"]).json()["request"]

    def test_a_tenant_admins_batch_is_visible_to_it(self, client: TestClient, session: Session, world: World) -> None:
        fund_pool(session, world.tenant, 2 * THRESHOLD)
        csv = csv_body("user_id,amount", f"{world.users[0].id},{THRESHOLD + 1}")
        approval = _held(post_batch(client, world.tenant_admin, csv, key="t-b"))
        assert approval["tenant_id"] == world.tenant.id
        detail = _get(client, world.tenant_admin, approval["id"]).json()
        assert "first_rows" not in detail["request"]
        assert _get(client, world.other_admin, approval["id"]).status_code == 404
        assert _approve(client, world.approver, approval["id"]).status_code == 200
        assert balance_of(session, world.tenant.pool_account_id) == THRESHOLD - 1
        assert balance_of(session, world.users[0].account_id) == THRESHOLD + 1


class TestTheDatabaseKeepsTheRules:
    def test_a_decided_approval_never_changes_and_none_is_deleted(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        approval = _held(_recharge(client, world.requester, world.users[0], THRESHOLD + 1))
        for statement in (
            # Self-approval, even straight in SQL.
            "UPDATE recharge_approvals SET status = 'approved', decided_at = now(), "
            "decided_by_user_id = requested_by_user_id WHERE id = :id",
            "UPDATE recharge_approvals SET payload = '{}' , status = 'rejected', decided_at = now(), "
            "decided_by_user_id = 0 WHERE id = :id",
            "UPDATE recharge_approvals SET status = 'expired', decided_at = now() WHERE id = :id",
            "DELETE FROM recharge_approvals WHERE id = :id",
        ):
            with pytest.raises(DBAPIError):
                session.execute(text(statement), {"id": approval["id"]})
            session.rollback()
        _reject(client, world.approver, approval["id"])
        with pytest.raises(DBAPIError):
            session.execute(text("UPDATE recharge_approvals SET decision_note = 'x' WHERE id = :id"), approval)
        session.rollback()


def test_the_list_filters_by_kind(client: TestClient, world: World) -> None:
    single = _held(_recharge(client, world.requester, world.users[0], THRESHOLD + 1, key="kind-single"))
    batch = _held(
        post_batch(client, world.requester, csv_body("user_id,amount", f"{world.users[1].id},{THRESHOLD + 1}"), key="k")
    )

    def listed(**params: str) -> list[int]:
        response = client.get(APPROVALS, params=params, headers=world.approver.headers())
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert listed() == [batch["id"], single["id"]]
    assert listed(kind="batch") == [batch["id"]]
    assert listed(kind="single", status="pending") == [single["id"]]
    assert listed(kind="reversal") == []
    assert_problem(
        client.get(APPROVALS, params={"kind": "bonus"}, headers=world.approver.headers()), 422, "validation_error"
    )
