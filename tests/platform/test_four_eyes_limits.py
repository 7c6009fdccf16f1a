"""Four eyes over every way to mint or move staff tokens, through HTTP: adjustments and reversals above the
threshold wait for approval like recharges (approving applies them exactly once, never by their requester), and a
requester's rolling 24-hour total of what it applied without review holds whatever would pass it, so one large
amount split into small recharges, batches, adjustments or reversals still meets a second operator."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.approvals.service import Policy
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.conftest import make_settings
from tests.factories import create_tenant, create_user, fund, issue_key
from tests.platform.recharge_helpers import (
    ADJUSTMENTS,
    APPROVALS,
    SINGLE,
    Actor,
    approve,
    assert_problem,
    audit_events,
    balance_of,
    count,
    csv_body,
    fund_pool,
    held,
    post_batch,
    reject,
    reversal_path,
    staff,
    tenant_admin,
)

THRESHOLD = 100_000  # the default approval_threshold_amount
DAILY = 1_000  # this module's approval_threshold_daily_total (the default is 1,000,000)


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url, approval_threshold_daily_total=DAILY)


@dataclass
class World:
    requester: Actor  # an operator
    approver: Actor  # another operator
    tenant: Tenant
    tenant_admin: Actor
    users: list[User]  # members of `tenant`


@pytest.fixture
def world(session: Session, settings: Settings) -> World:
    tenant = create_tenant(session)
    return World(
        requester=staff(session, settings, Role.operator),
        approver=staff(session, settings, Role.operator),
        tenant=tenant,
        tenant_admin=tenant_admin(session, settings, tenant),
        users=[create_user(session, tenant=tenant, password=None) for _ in range(3)],
    )


def _recharge(client: TestClient, actor: Actor, user: User, amount: int, key: str) -> httpx.Response:
    body = {"user_id": user.id, "amount": amount, "reason": "split"}
    return client.post(SINGLE, json=body, headers=actor.headers(key))


def _adjust(client: TestClient, actor: Actor, user: User, amount: int, key: str) -> httpx.Response:
    body = {"user_id": user.id, "amount": amount, "reason": "correction"}
    return client.post(ADJUSTMENTS, json=body, headers=actor.headers(key))


def _reverse(client: TestClient, actor: Actor, transaction_id: int, key: str) -> httpx.Response:
    return client.post(reversal_path(transaction_id), json={"reason": "undo"}, headers=actor.headers(key))


def _applied(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _held_because(client: TestClient, actor: Actor, approval_id: int) -> str:
    detail = client.get(f"{APPROVALS}/{approval_id}", headers=actor.headers())
    assert detail.status_code == 200, detail.text
    reason: str = detail.json()["request"]["held_because"]
    return reason


def _transaction(session: Session, transaction_id: int) -> Any:
    session.rollback()  # a fresh snapshot: the app committed in another connection
    return session.execute(
        text("SELECT idempotency_key, actor, kind, amount FROM ledger_transactions WHERE id = :id"),
        {"id": transaction_id},
    ).one()


class TestPolicy:
    def test_sizes_at_a_threshold_apply_and_above_wait(self) -> None:
        policy = Policy(threshold_amount=10, threshold_batch_total=30, threshold_daily_total=50, ttl_seconds=60)
        assert policy.size_reason(amount=10) is None
        assert policy.size_reason(amount=11) == "amount"
        assert policy.size_reason(amount=30, largest=10) is None
        assert policy.size_reason(amount=31, largest=10) == "batch_total"
        assert policy.size_reason(amount=12, largest=11) == "amount"
        assert policy.window_reason(unreviewed=40, amount=10) is None
        assert policy.window_reason(unreviewed=40, amount=11) == "daily_total"


class TestAdjustments:
    def test_a_large_adjustment_waits_and_approving_applies_it_once(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        approval = held(_adjust(client, world.requester, user, THRESHOLD + 1, "adj-big"))
        assert (approval["kind"], approval["total_amount"], approval["row_count"], approval["tenant_id"]) == (
            "adjustment",
            THRESHOLD + 1,
            1,
            world.tenant.id,
        )
        assert balance_of(session, user.account_id) == 0
        # The same key replays the approval; another body under it is refused.
        again = _adjust(client, world.requester, user, THRESHOLD + 1, "adj-big")
        assert (again.status_code, again.json()["id"], again.headers["Idempotent-Replayed"]) == (
            202,
            approval["id"],
            "true",
        )
        assert_problem(_adjust(client, world.requester, user, THRESHOLD + 2, "adj-big"), 409, "idempotency_key_reused")
        detail = client.get(f"{APPROVALS}/{approval['id']}", headers=world.approver.headers()).json()
        assert detail["request"]["target"] == {"user_id": user.id, "email": user.email}
        assert (detail["request"]["body"]["amount"], detail["request"]["held_because"]) == (THRESHOLD + 1, "amount")

        assert_problem(approve(client, world.requester, approval["id"]), 403, "self_approval")
        approved = approve(client, world.approver, approval["id"])
        assert approved.status_code == 200, approved.text
        transaction_id = approved.json()["result"]["transaction_id"]
        assert balance_of(session, user.account_id) == THRESHOLD + 1
        txn = _transaction(session, transaction_id)
        # Applied as the requester asked (their key is the actor), under the approval's key.
        assert (txn.idempotency_key, txn.kind, txn.actor) == (
            f"approval:{approval['id']}",
            "adjustment",
            f"key:{approval['requested_by_api_key_id']}",
        )
        assert_problem(approve(client, world.approver, approval["id"]), 409, "approval_not_pending")
        replay = _adjust(client, world.requester, user, THRESHOLD + 1, "adj-big")
        assert replay.status_code == 200, replay.text
        assert (replay.json()["transaction_id"], replay.headers["Idempotent-Replayed"]) == (transaction_id, "true")
        assert balance_of(session, user.account_id) == THRESHOLD + 1
        [event] = audit_events(session, "ledger.adjust")
        assert (event.actor_user_id, event.after["approval_id"]) == (world.approver.user.id, approval["id"])

    def test_a_debit_waits_by_its_magnitude_and_one_the_account_cannot_cover_is_refused_now(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        fund(session, account_id=user.account_id, amount=2 * THRESHOLD)
        assert_problem(_adjust(client, world.requester, user, -3 * THRESHOLD, "too-much"), 402, "insufficient_tokens")
        approval = held(_adjust(client, world.requester, user, -(THRESHOLD + 1), "debit"))
        assert approval["total_amount"] == THRESHOLD + 1
        assert balance_of(session, user.account_id) == 2 * THRESHOLD
        assert approve(client, world.approver, approval["id"]).status_code == 200
        assert balance_of(session, user.account_id) == THRESHOLD - 1

    def test_a_rejected_adjustment_applies_nothing(self, client: TestClient, session: Session, world: World) -> None:
        user = world.users[0]
        approval = held(_adjust(client, world.requester, user, THRESHOLD + 1, "adj-no"))
        assert reject(client, world.approver, approval["id"]).json()["status"] == "rejected"
        assert_problem(approve(client, world.approver, approval["id"]), 409, "approval_not_pending")
        replay = _adjust(client, world.requester, user, THRESHOLD + 1, "adj-no")
        assert (replay.status_code, replay.json()["status"]) == (202, "rejected")
        assert balance_of(session, user.account_id) == 0


class TestReversals:
    def test_reversing_a_large_transaction_waits_and_approving_applies_it_once(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        original = fund(session, account_id=user.account_id, amount=THRESHOLD + 1)
        approval = held(_reverse(client, world.requester, original, "rev-big"))
        assert (approval["kind"], approval["total_amount"]) == ("reversal", THRESHOLD + 1)
        assert balance_of(session, user.account_id) == THRESHOLD + 1
        detail = client.get(f"{APPROVALS}/{approval['id']}", headers=world.approver.headers()).json()
        assert detail["request"]["original"]["transaction_id"] == original
        # What approving would refuse is refused now: unknown and unreversible transactions.
        assert_problem(_reverse(client, world.requester, 999_999, "rev-unknown"), 404, "transaction_not_found")

        assert_problem(approve(client, world.requester, approval["id"]), 403, "self_approval")
        approved = approve(client, world.approver, approval["id"])
        assert approved.status_code == 200, approved.text
        reversal_id = approved.json()["result"]["transaction_id"]
        assert balance_of(session, user.account_id) == 0
        assert _transaction(session, reversal_id).idempotency_key == f"approval:{approval['id']}"
        replay = _reverse(client, world.requester, original, "rev-big")
        assert (replay.status_code, replay.json()["transaction_id"]) == (200, reversal_id)
        assert_problem(_reverse(client, world.requester, original, "rev-again"), 409, "already_reversed")
        assert_problem(_reverse(client, world.requester, reversal_id, "rev-rev"), 422, "not_reversible")
        [event] = audit_events(session, "ledger.reverse")
        assert (event.after["approval_id"], event.after["amount"]) == (approval["id"], THRESHOLD + 1)


class TestTheRollingTotal:
    def test_splitting_an_amount_across_every_kind_of_request_still_meets_review(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        u0, u1, u2 = world.users
        original = fund(session, account_id=u2.account_id, amount=100)
        _applied(_recharge(client, world.requester, u0, 400, "r-1"))
        batch = post_batch(
            client, world.requester, csv_body("user_id,amount", f"{u0.id},150", f"{u1.id},150"), key="b-1"
        )
        assert batch.status_code == 201, batch.text
        _applied(_adjust(client, world.requester, u1, -100, "a-1"))  # counts by its magnitude
        _applied(_reverse(client, world.requester, original, "v-1"))  # 900 so far
        # Exactly at the daily total still applies; one token past it waits, whatever the kind of request.
        _applied(_recharge(client, world.requester, u0, 100, "r-2"))
        waiting = [
            held(_recharge(client, world.requester, u0, 1, "r-3")),
            held(_adjust(client, world.requester, u0, 1, "a-2")),
            held(post_batch(client, world.requester, csv_body("user_id,amount", f"{u1.id},1"), key="b-2")),
        ]
        fund(session, account_id=u2.account_id, amount=1)
        second = session.execute(text("SELECT max(id) FROM ledger_transactions")).scalar_one()
        waiting.append(held(_reverse(client, world.requester, second, "v-2")))
        assert [_held_because(client, world.approver, a["id"]) for a in waiting] == ["daily_total"] * 4
        assert [a["kind"] for a in waiting] == ["single", "adjustment", "batch", "reversal"]
        # A dry run says a real run would wait.
        dry = post_batch(client, world.requester, csv_body("user_id,amount", f"{u1.id},1"), key="b-3", dry_run=True)
        assert (dry.status_code, dry.json()["approval_required"]) == (200, True)
        # The total is the requester's: another operator is not held by it.
        _applied(_recharge(client, world.approver, u0, 1, "other-1"))
        # Approving applies what waited; what was applied after review does not count against anyone.
        assert approve(client, world.approver, waiting[0]["id"]).status_code == 200
        assert balance_of(session, u0.account_id) == 400 + 150 + 100 + 1 + 1
        _applied(_recharge(client, world.approver, u0, DAILY - 1, "other-2"))

    def test_the_total_is_the_users_whatever_key_it_uses(
        self, client: TestClient, session: Session, settings: Settings, world: World
    ) -> None:
        second_key = Actor(world.requester.user, issue_key(session, settings, world.requester.user))
        _applied(_recharge(client, world.requester, world.users[0], DAILY, "k-1"))
        held(_recharge(client, second_key, world.users[0], 1, "k-2"))

    def test_only_the_last_24_hours_count(self, client: TestClient, session: Session, world: World) -> None:
        def applied_earlier(hours: int, amount: int) -> None:
            session.execute(
                text(
                    "INSERT INTO audit_events (occurred_at, actor_user_id, tenant_id, action, target_type, after) "
                    "VALUES (now() - make_interval(hours => :hours), :user_id, NULL, 'recharge.create', "
                    "'ledger_transaction', CAST(:after AS jsonb))"
                ),
                {"hours": hours, "user_id": world.requester.user.id, "after": f'{{"amount": {amount}}}'},
            )
            session.commit()

        applied_earlier(25, DAILY)  # a day ago: out of the window
        _applied(_recharge(client, world.requester, world.users[0], DAILY - 100, "w-1"))
        applied_earlier(23, 100)  # inside it: the total is now exactly the daily total
        held(_recharge(client, world.requester, world.users[0], 1, "w-2"))

    def test_what_was_applied_after_review_does_not_count(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        user = world.users[0]
        approval = held(_recharge(client, world.requester, user, THRESHOLD + 1, "big"))
        assert approve(client, world.approver, approval["id"]).status_code == 200
        _applied(_recharge(client, world.requester, user, DAILY, "after-1"))
        _applied(_recharge(client, world.approver, user, DAILY, "after-2"))
        assert balance_of(session, user.account_id) == THRESHOLD + 1 + 2 * DAILY

    def test_a_tenant_admin_spending_its_pool_is_held_too(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        fund_pool(session, world.tenant, 10 * DAILY)
        user = world.users[0]
        _applied(_recharge(client, world.tenant_admin, user, DAILY - 10, "t-1"))
        approval = held(_recharge(client, world.tenant_admin, user, 11, "t-2"))
        assert approval["tenant_id"] == world.tenant.id
        assert _held_because(client, world.tenant_admin, approval["id"]) == "daily_total"
        assert approve(client, world.approver, approval["id"]).status_code == 200
        assert balance_of(session, user.account_id) == DAILY + 1
        assert balance_of(session, world.tenant.pool_account_id) == 9 * DAILY - 1

    def test_concurrent_small_requests_cannot_all_slip_under(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        # Each fits under the total alone; together they do not. Without the requester's lock, requests that
        # read the total at the same moment would all apply.
        senders = 6
        barrier = threading.Barrier(senders)

        def send(n: int) -> httpx.Response:
            barrier.wait(timeout=30)
            return _recharge(client, world.requester, world.users[n % 3], DAILY // 4, f"c-{n}")

        with ThreadPoolExecutor(max_workers=senders) as pool:
            responses = list(pool.map(send, range(senders)))
        assert sorted(r.status_code for r in responses) == [201] * 4 + [202] * 2, [r.text for r in responses]
        assert sum(balance_of(session, u.account_id) for u in world.users) == DAILY
        assert count(session, "recharge_approvals") == 2
