"""Single recharges through HTTP (`POST /admin/v1/recharges`): who may credit whom, from which source, how much,
idempotency, and the audit trail. Batches are in test_recharge_batches.py and test_recharge_batch_runs.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.app import create_app
from facemint.auth.scopes import Scope
from facemint.config import Settings
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, issue_key
from tests.platform.recharge_helpers import (
    SINGLE,
    Actor,
    assert_problem,
    audit_events,
    balance_of,
    csv_body,
    freeze,
    fund_pool,
    post_batch,
    recharge_transactions,
    staff,
    tenant_admin,
)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def operator(session: Session, settings: Settings) -> Actor:
    return staff(session, settings, Role.operator)


def _recharge(client: TestClient, actor: Actor, body: dict[str, Any], key: str | None = "k-1") -> Any:
    return client.post(SINGLE, json=body, headers=actor.headers(key))


class TestWhoCreditsWhom:
    def test_operator_credits_a_user_by_id(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        response = _recharge(client, operator, {"user_id": user.id, "amount": 250, "reason": "welcome"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["amount"] == 250
        assert body["replayed"] is False
        assert body["target"] == {"user_id": user.id, "email": user.email}
        assert (body["balance"], body["held"], body["available"]) == (250, 0, 250)
        assert "Idempotent-Replayed" not in response.headers
        assert balance_of(session, user.account_id) == 250
        txn = session.execute(
            text("SELECT kind, amount, reason, tenant_id FROM ledger_transactions WHERE id = :id"),
            {"id": body["transaction_id"]},
        ).one()
        assert (txn.kind, txn.amount, txn.reason, txn.tenant_id) == ("recharge", 250, "welcome", user.tenant_id)

    def test_operator_credits_a_user_by_email_case_insensitively(
        self, client: TestClient, session: Session, operator: Actor
    ) -> None:
        user = create_user(session, email="mixed.case@example.test", password=None)
        response = _recharge(client, operator, {"email": "  Mixed.Case@EXAMPLE.test ", "amount": 40, "reason": "r"})
        assert response.status_code == 201, response.text
        assert response.json()["target"]["user_id"] == user.id
        assert balance_of(session, user.account_id) == 40

    def test_unknown_user_is_404(self, client: TestClient, operator: Actor) -> None:
        response = _recharge(client, operator, {"email": "nobody@example.test", "amount": 1, "reason": "r"})
        assert_problem(response, 404, "user_not_found")
        response = _recharge(client, operator, {"user_id": 987654, "amount": 1, "reason": "r"}, key="k-2")
        assert_problem(response, 404, "user_not_found")

    def test_operator_fills_a_tenant_pool(self, client: TestClient, session: Session, operator: Actor) -> None:
        tenant = create_tenant(session)
        response = _recharge(client, operator, {"tenant_id": tenant.id, "amount": 1000, "reason": "contract"})
        assert response.status_code == 201, response.text
        assert response.json()["target"] == {"tenant_id": tenant.id, "account": "pool"}
        assert response.json()["balance"] == 1000
        assert balance_of(session, tenant.pool_account_id) == 1000

    def test_unknown_tenant_pool_is_404(self, client: TestClient, operator: Actor) -> None:
        response = _recharge(client, operator, {"tenant_id": 999999, "amount": 5, "reason": "r"})
        assert_problem(response, 404, "tenant_not_found")

    def test_tenant_admin_credits_its_user_from_the_pool(
        self, client: TestClient, session: Session, settings: Settings
    ) -> None:
        tenant = create_tenant(session)
        admin = tenant_admin(session, settings, tenant)
        member = create_user(session, tenant=tenant, password=None)
        fund_pool(session, tenant, 100)
        response = _recharge(client, admin, {"email": member.email, "amount": 60, "reason": "bonus"})
        assert response.status_code == 201, response.text
        assert balance_of(session, member.account_id) == 60
        assert balance_of(session, tenant.pool_account_id) == 40

    def test_tenant_admin_never_spends_beyond_the_pool(
        self, client: TestClient, session: Session, settings: Settings
    ) -> None:
        tenant = create_tenant(session)
        admin = tenant_admin(session, settings, tenant)
        member = create_user(session, tenant=tenant, password=None)
        fund_pool(session, tenant, 50)
        body = assert_problem(
            _recharge(client, admin, {"user_id": member.id, "amount": 51, "reason": "r"}), 402, "insufficient_tokens"
        )
        assert body["available"] == 50
        assert balance_of(session, member.account_id) == 0
        assert balance_of(session, tenant.pool_account_id) == 50
        assert recharge_transactions(session) == 0
        # The whole pool is fine, and the refused key was not burnt.
        response = _recharge(client, admin, {"user_id": member.id, "amount": 50, "reason": "r"})
        assert response.status_code == 201, response.text
        assert balance_of(session, tenant.pool_account_id) == 0

    def test_tenant_admin_cannot_fill_pools(self, client: TestClient, session: Session, settings: Settings) -> None:
        tenant = create_tenant(session)
        admin = tenant_admin(session, settings, tenant)
        for target in (tenant.id, create_tenant(session).id):
            response = _recharge(client, admin, {"tenant_id": target, "amount": 10, "reason": "r"}, key=f"k{target}")
            assert_problem(response, 403, "forbidden")
        assert balance_of(session, tenant.pool_account_id) == 0
        assert recharge_transactions(session) == 0

    def test_another_tenants_user_answers_404(self, client: TestClient, session: Session, settings: Settings) -> None:
        tenant = create_tenant(session)
        admin = tenant_admin(session, settings, tenant)
        fund_pool(session, tenant, 100)
        stranger = create_user(session, tenant=create_tenant(session))
        for i, target in enumerate(({"user_id": stranger.id}, {"email": stranger.email})):
            response = _recharge(client, admin, {**target, "amount": 10, "reason": "r"}, key=f"k{i}")
            assert_problem(response, 404, "user_not_found")
        assert balance_of(session, stranger.account_id) == 0
        assert balance_of(session, tenant.pool_account_id) == 100

    def test_frozen_user_is_refused(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        freeze(session, user)
        response = _recharge(client, operator, {"user_id": user.id, "amount": 10, "reason": "r"})
        assert_problem(response, 422, "user_frozen")
        assert balance_of(session, user.account_id) == 0

    def test_a_suspended_tenants_user_is_refused(self, client: TestClient, session: Session, operator: Actor) -> None:
        tenant = create_tenant(session)
        user = create_user(session, tenant=tenant, password=None)
        session.execute(text("UPDATE tenants SET status = 'suspended' WHERE id = :id"), {"id": tenant.id})
        session.commit()
        response = _recharge(client, operator, {"user_id": user.id, "amount": 10, "reason": "r"})
        assert_problem(response, 422, "tenant_suspended")
        assert balance_of(session, user.account_id) == 0
        assert recharge_transactions(session) == 0

    def test_a_key_without_recharges_write_is_refused(
        self, client: TestClient, session: Session, settings: Settings
    ) -> None:
        reader = create_user(session, role=Role.operator, password=None)
        key = issue_key(session, settings, reader, scopes=[Scope.recharges_read])
        user = create_user(session, password=None)
        response = _recharge(client, Actor(reader, key), {"user_id": user.id, "amount": 10, "reason": "r"})
        assert_problem(response, 403, "insufficient_scope")
        member = create_user(session, password=None)
        response = _recharge(
            client,
            Actor(member, issue_key(session, settings, member)),
            {"user_id": user.id, "amount": 1, "reason": "r"},
        )
        assert_problem(response, 403, "insufficient_scope")
        assert balance_of(session, user.account_id) == 0


class TestAmountsAndBody:
    @pytest.mark.parametrize("amount", [0, -5, 1.5, 1.0, "abc", "10", "", None, True, [], 2**63])
    def test_invalid_amounts_are_problem_responses(
        self, client: TestClient, session: Session, operator: Actor, amount: object
    ) -> None:
        user = create_user(session, password=None)
        response = _recharge(client, operator, {"user_id": user.id, "amount": amount, "reason": "r"})
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] in ("validation_error", "invalid_amount", "amount_above_ceiling")
        assert balance_of(session, user.account_id) == 0
        assert recharge_transactions(session) == 0

    def test_amount_above_the_ceiling_is_refused(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        ceiling = 10_000_000
        response = _recharge(client, operator, {"user_id": user.id, "amount": ceiling + 1, "reason": "r"})
        assert_problem(response, 422, "amount_above_ceiling")
        response = _recharge(client, operator, {"user_id": user.id, "amount": ceiling, "reason": "r"})
        # At the ceiling, yet above the four-eyes threshold: accepted, and held for approval (test_approvals.py).
        assert response.status_code == 202, response.text
        assert response.json()["total_amount"] == ceiling
        assert balance_of(session, user.account_id) == 0

    @pytest.mark.parametrize(
        "body",
        [
            {"amount": 5, "reason": "no target"},
            {"user_id": 1, "email": "a@b.co", "amount": 5, "reason": "two targets"},
            {"user_id": 1, "amount": 5},
            {"user_id": 1, "amount": 5, "reason": "   "},
            {"user_id": 1, "amount": 5, "reason": "r", "surprise": True},
        ],
    )
    def test_malformed_bodies_are_422(self, client: TestClient, operator: Actor, body: dict[str, Any]) -> None:
        assert_problem(_recharge(client, operator, body), 422, "validation_error")

    def test_idempotency_key_is_required(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        response = _recharge(client, operator, {"user_id": user.id, "amount": 5, "reason": "r"}, key=None)
        assert_problem(response, 400, "idempotency_key_required")
        assert balance_of(session, user.account_id) == 0


class TestIdempotency:
    def test_replay_returns_the_same_transaction(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        body = {"user_id": user.id, "amount": 70, "reason": "r", "reference": "INV-1"}
        first = _recharge(client, operator, body, key="same")
        again = _recharge(client, operator, body, key="same")
        assert first.status_code == 201, first.text
        assert again.status_code == 200, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["transaction_id"] == first.json()["transaction_id"]
        assert again.json()["replayed"] is True
        assert balance_of(session, user.account_id) == 70
        assert recharge_transactions(session) == 1
        assert len(audit_events(session, "recharge.create")) == 1

    def test_concurrent_duplicates_apply_once(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        n = 8
        barrier = threading.Barrier(n)

        def send(_: int) -> Any:
            barrier.wait(timeout=30)
            return _recharge(client, operator, {"user_id": user.id, "amount": 12, "reason": "r"}, key="dup")

        with ThreadPoolExecutor(max_workers=n) as pool:
            responses = list(pool.map(send, range(n)))
        assert sorted(r.status_code for r in responses) == [200] * (n - 1) + [201], [r.text for r in responses]
        assert all(r.headers.get("Idempotent-Replayed") == "true" for r in responses if r.status_code == 200)
        assert len({r.json()["transaction_id"] for r in responses}) == 1
        assert balance_of(session, user.account_id) == 12
        assert recharge_transactions(session) == 1

    def test_malformed_idempotency_key_is_400(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        response = _recharge(client, operator, {"user_id": user.id, "amount": 5, "reason": "r"}, key="k" * 256)
        assert_problem(response, 400, "invalid_idempotency_key")
        assert balance_of(session, user.account_id) == 0

    def test_single_and_batch_keys_are_separate(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        single = _recharge(client, operator, {"user_id": user.id, "amount": 5, "reason": "r"}, key="both")
        batch = post_batch(client, operator, csv_body("user_id,amount", f"{user.id},7"), key="both")
        assert (single.status_code, batch.status_code) == (201, 201), batch.text
        assert balance_of(session, user.account_id) == 12

    def test_same_key_with_another_body_is_409(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        assert _recharge(client, operator, {"user_id": user.id, "amount": 5, "reason": "r"}, key="k").status_code == 201
        response = _recharge(client, operator, {"user_id": user.id, "amount": 6, "reason": "r"}, key="k")
        assert_problem(response, 409, "idempotency_key_reused")
        assert balance_of(session, user.account_id) == 5

    def test_keys_are_namespaced_per_tenant(self, client: TestClient, session: Session, settings: Settings) -> None:
        credited = []
        for _ in range(2):
            tenant = create_tenant(session)
            fund_pool(session, tenant, 10)
            member = create_user(session, tenant=tenant, password=None)
            admin = tenant_admin(session, settings, tenant)
            response = _recharge(client, admin, {"user_id": member.id, "amount": 3, "reason": "r"}, key="shared-key")
            assert response.status_code == 201, response.text
            credited.append(member)
        assert [balance_of(session, m.account_id) for m in credited] == [3, 3]


def test_the_recharge_is_audited(client: TestClient, session: Session, operator: Actor) -> None:
    user = create_user(session, password=None)
    response = _recharge(client, operator, {"user_id": user.id, "amount": 9, "reason": "audited", "reference": "R-9"})
    assert response.status_code == 201, response.text
    [event] = audit_events(session, "recharge.create")
    assert event.actor_user_id == operator.user.id
    assert event.actor_api_key_id is not None
    assert event.tenant_id == user.tenant_id
    assert (event.target_type, event.target_id) == ("ledger_transaction", str(response.json()["transaction_id"]))
    assert (event.after["amount"], event.after["reason"], event.after["reference"]) == (9, "audited", "R-9")
