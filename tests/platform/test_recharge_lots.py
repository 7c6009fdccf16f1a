"""Recharges with lot terms through HTTP: `priority` and `expires_at` on single recharges and batch rows (JSON items
and CSV columns), their validation, their place in the idempotency hash, approvals that carry them through, and the
balance views that show the lots and the next expiry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.ledger import lots
from facemint.app import create_app
from facemint.config import Settings
from facemint.users.orm import Role
from tests.factories import bearer, create_tenant, create_user, issue_key
from tests.platform.recharge_helpers import (
    SINGLE,
    Actor,
    approve,
    assert_problem,
    csv_body,
    fund_pool,
    post_batch,
    staff,
    tenant_admin,
)

SOON = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
LATER = SOON + timedelta(days=30)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def operator(session: Session, settings: Settings) -> Actor:
    return staff(session, settings, Role.operator)


def _recharge(client: TestClient, actor: Actor, body: dict[str, Any], key: str = "lot-1") -> Any:
    return client.post(SINGLE, json=body, headers=actor.headers(key))


def _lot_terms(session: Session, transaction_id: int) -> set[tuple[int, str, int, datetime | None, int]]:
    return {
        (lot.account_id, lot.source, lot.priority, lot.expires_at, lot.amount)
        for lot in lots.lots_of_transaction(session, transaction_id=transaction_id)
    }


class TestSingle:
    def test_priority_and_expiry_land_on_the_credited_lot(
        self, client: TestClient, session: Session, operator: Actor
    ) -> None:
        user = create_user(session, password=None)
        response = _recharge(
            client,
            operator,
            {"user_id": user.id, "amount": 40, "reason": "promo", "priority": 10, "expires_at": SOON.isoformat()},
        )
        assert response.status_code == 201, response.text
        (lot,) = response.json()["lots"]
        assert (lot["source"], lot["priority"], lot["amount"], lot["remaining"], lot["held"]) == (
            "recharge",
            10,
            40,
            40,
            0,
        )
        assert datetime.fromisoformat(lot["expires_at"]) == SOON

    def test_a_paid_recharge_defaults_to_priority_50_and_never_expires(
        self, client: TestClient, session: Session, operator: Actor
    ) -> None:
        user = create_user(session, password=None)
        response = _recharge(client, operator, {"user_id": user.id, "amount": 5, "reason": "paid"})
        assert response.status_code == 201, response.text
        assert _lot_terms(session, response.json()["transaction_id"]) == {(user.account_id, "recharge", 50, None, 5)}

    @pytest.mark.parametrize(
        "terms",
        [
            {"priority": 101},
            {"priority": -1},
            {"priority": "10"},
            {"priority": 1.5},
            {"expires_at": "2020-01-01T00:00:00Z"},
            {"expires_at": "2099-01-01T00:00:00"},  # no time zone
            {"expires_at": "next week"},
        ],
    )
    def test_bad_terms_are_422(
        self, client: TestClient, session: Session, operator: Actor, terms: dict[str, Any]
    ) -> None:
        user = create_user(session, password=None)
        response = _recharge(client, operator, {"user_id": user.id, "amount": 5, "reason": "r", **terms})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")

    def test_the_terms_are_part_of_the_request_the_key_names(
        self, client: TestClient, session: Session, operator: Actor
    ) -> None:
        user = create_user(session, password=None)
        body = {"user_id": user.id, "amount": 5, "reason": "r", "priority": 20}
        assert _recharge(client, operator, body).status_code == 201
        assert _recharge(client, operator, body).json()["replayed"] is True
        assert_problem(_recharge(client, operator, {**body, "priority": 30}), 409, "idempotency_key_reused")
        assert_problem(
            _recharge(client, operator, {**body, "expires_at": SOON.isoformat()}), 409, "idempotency_key_reused"
        )

    def test_a_tenant_admin_hands_on_the_pools_expiry_when_it_is_sooner(
        self, client: TestClient, session: Session, settings: Settings, operator: Actor
    ) -> None:
        tenant = create_tenant(session)
        user = create_user(session, tenant=tenant, password=None)
        filled = _recharge(
            client,
            operator,
            {"tenant_id": tenant.id, "amount": 100, "reason": "trial pool", "expires_at": SOON.isoformat()},
            key="pool",
        )
        assert filled.status_code == 201, filled.text
        admin = tenant_admin(session, settings, tenant)
        response = _recharge(
            client,
            admin,
            {"user_id": user.id, "amount": 30, "reason": "hand out", "priority": 5, "expires_at": LATER.isoformat()},
        )
        assert response.status_code == 201, response.text
        assert _lot_terms(session, response.json()["transaction_id"]) == {(user.account_id, "transfer", 5, SOON, 30)}

    def test_an_approved_recharge_keeps_its_terms(
        self, client: TestClient, session: Session, settings: Settings, operator: Actor
    ) -> None:
        user = create_user(session, password=None)
        held = _recharge(
            client,
            operator,
            {"user_id": user.id, "amount": 200_000, "reason": "big", "priority": 70, "expires_at": LATER.isoformat()},
        )
        assert held.status_code == 202, held.text
        approved = approve(client, staff(session, settings, Role.operator), held.json()["id"])
        assert approved.status_code == 200, approved.text
        transaction_id = approved.json()["result"]["transaction_id"]
        assert _lot_terms(session, transaction_id) == {(user.account_id, "recharge", 70, LATER, 200_000)}

    def test_an_approval_applied_after_its_expiry_passed_is_refused_and_stays_pending(
        self, client: TestClient, session: Session, settings: Settings, operator: Actor, owner_engine: Engine
    ) -> None:
        user = create_user(session, password=None)
        held = _recharge(
            client,
            operator,
            {"user_id": user.id, "amount": 200_000, "reason": "big", "expires_at": SOON.isoformat()},
        )
        approval_id = held.json()["id"]
        with owner_engine.begin() as conn:  # time passes: the recharge's expiry is behind it
            conn.execute(
                text(
                    "ALTER TABLE recharge_approvals DISABLE TRIGGER recharge_approvals_one_way; "
                    "UPDATE recharge_approvals SET payload = jsonb_set(payload, '{body,expires_at}', "
                    "to_jsonb('2020-01-01T00:00:00Z'::text)) WHERE id = :id; "
                    "ALTER TABLE recharge_approvals ENABLE TRIGGER recharge_approvals_one_way"
                ),
                {"id": approval_id},
            )
        response = approve(client, staff(session, settings, Role.operator), approval_id)
        assert_problem(response, 422, "invalid_lot_terms")
        status = session.execute(
            text("SELECT status FROM recharge_approvals WHERE id = :id"), {"id": approval_id}
        ).scalar_one()
        assert status == "pending"


class TestBatch:
    def test_csv_columns_in_any_order_after_amount(self, client: TestClient, session: Session, operator: Actor) -> None:
        a, b, c = (create_user(session, password=None) for _ in range(3))
        body = csv_body(
            "user_id,amount,expires_at,priority,reference",
            f"{a.id},10,{SOON.isoformat()},10,promo",
            f"{b.id},20,,,paid",
            f"{c.id},30,{LATER.isoformat()},,",
        )
        response = post_batch(client, operator, body, key="lots-csv")
        assert response.status_code == 201, response.text
        assert _lot_terms(session, response.json()["transaction_id"]) == {
            (a.account_id, "recharge", 10, SOON, 10),
            (b.account_id, "recharge", 50, None, 20),
            (c.account_id, "recharge", 50, LATER, 30),
        }

    def test_json_items_take_priority_and_expires_at(
        self, client: TestClient, session: Session, operator: Actor
    ) -> None:
        a = create_user(session, password=None)
        body = {"items": [{"user_id": a.id, "amount": 7, "priority": 0, "expires_at": SOON.isoformat()}]}
        response = post_batch(client, operator, body, key="lots-json")
        assert response.status_code == 201, response.text
        assert _lot_terms(session, response.json()["transaction_id"]) == {(a.account_id, "recharge", 0, SOON, 7)}

    def test_rows_with_bad_terms_fail_alone_in_partial_mode(
        self, client: TestClient, session: Session, operator: Actor
    ) -> None:
        users = [create_user(session, password=None) for _ in range(4)]
        body = csv_body(
            "user_id,amount,priority,expires_at",
            f"{users[0].id},1,101,",
            f"{users[1].id},1,,2020-01-01T00:00:00+00:00",
            f"{users[2].id},1,,2099-01-01T00:00:00",
            f"{users[3].id},1,99,",
        )
        response = post_batch(client, operator, body, key="lots-bad", mode="partial")
        assert response.status_code == 201, response.text
        result = response.json()
        assert [(f["row"], f["code"]) for f in result["failed"]] == [
            (1, "invalid_priority"),
            (2, "invalid_expiry"),
            (3, "invalid_expiry"),
        ]
        assert result["applied"] == 1

    def test_an_unknown_column_is_a_header_error(self, client: TestClient, session: Session, operator: Actor) -> None:
        user = create_user(session, password=None)
        response = post_batch(client, operator, csv_body("user_id,amount,colour", f"{user.id},1,red"), key="x")
        assert_problem(response, 400, "invalid_csv_header")
        twice = post_batch(client, operator, csv_body("user_id,amount,priority,priority", f"{user.id},1,2,3"), key="y")
        assert_problem(twice, 400, "invalid_csv_header")

    def test_a_tenant_admins_batch_draws_on_the_pool_in_row_order(
        self, client: TestClient, session: Session, settings: Settings, operator: Actor
    ) -> None:
        tenant = create_tenant(session)
        a, b = (create_user(session, tenant=tenant, password=None) for _ in range(2))
        expiring = _recharge(
            client,
            operator,
            {"tenant_id": tenant.id, "amount": 6, "reason": "trial", "priority": 10, "expires_at": SOON.isoformat()},
            key="pool-trial",
        )
        assert expiring.status_code == 201, expiring.text
        fund_pool(session, tenant, 100)
        admin = tenant_admin(session, settings, tenant)
        body = csv_body("user_id,amount,priority", f"{a.id},4,", f"{b.id},5,30")
        response = post_batch(client, admin, body, key="pool-batch")
        assert response.status_code == 201, response.text
        assert _lot_terms(session, response.json()["transaction_id"]) == {
            (a.account_id, "transfer", 10, SOON, 4),
            (b.account_id, "transfer", 30, SOON, 2),
            (b.account_id, "transfer", 30, None, 3),
        }

    def test_an_approved_batch_keeps_its_rows_terms(
        self, client: TestClient, session: Session, settings: Settings, operator: Actor
    ) -> None:
        user = create_user(session, password=None)
        body = csv_body("email,amount,priority,expires_at", f"{user.email},150000,15,{LATER.isoformat()}")
        held = post_batch(client, operator, body, key="big-batch")
        assert held.status_code == 202, held.text
        approved = approve(client, staff(session, settings, Role.operator), held.json()["id"])
        assert approved.status_code == 200, approved.text
        transaction_id = approved.json()["result"]["transaction_id"]
        assert _lot_terms(session, transaction_id) == {(user.account_id, "recharge", 15, LATER, 150_000)}


class TestBalanceViews:
    def test_my_balance_lists_lots_in_spending_order_and_the_next_expiry(
        self, client: TestClient, session: Session, settings: Settings, operator: Actor
    ) -> None:
        user = create_user(session, password=None)
        for key, terms in (
            ("b1", {"amount": 10}),
            ("b2", {"amount": 3, "priority": 10, "expires_at": LATER.isoformat()}),
            ("b3", {"amount": 4, "expires_at": SOON.isoformat()}),
            ("b4", {"amount": 2, "expires_at": SOON.isoformat()}),
        ):
            assert _recharge(client, operator, {"user_id": user.id, "reason": "r", **terms}, key=key).status_code == 201
        key = issue_key(session, settings, user)
        body = client.get("/v1/balance", headers=bearer(key)).json()
        assert (body["balance"], body["held"], body["available"]) == (19, 0, 19)
        assert [(lot["priority"], lot["remaining"]) for lot in body["lots"]] == [(10, 3), (50, 4), (50, 2), (50, 10)]
        assert body["next_expiry"]["amount"] == 6
        assert datetime.fromisoformat(body["next_expiry"]["expires_at"]) == SOON

    def test_admin_balance_views_show_lots_too(
        self, client: TestClient, session: Session, settings: Settings, operator: Actor
    ) -> None:
        tenant = create_tenant(session)
        user = create_user(session, tenant=tenant, password=None)
        fund_pool(session, tenant, 50)
        _recharge(client, operator, {"user_id": user.id, "amount": 8, "reason": "r", "expires_at": SOON.isoformat()})
        admin = staff(session, settings, Role.platform_admin)
        (row,) = client.get(f"/admin/v1/balances?user_id={user.id}", headers=admin.headers()).json()["items"]
        assert [(lot["remaining"], lot["source"]) for lot in row["lots"]] == [(8, "recharge")]
        assert row["next_expiry"]["amount"] == 8
        pool = client.get(f"/admin/v1/tenants/{tenant.id}/pool", headers=admin.headers()).json()
        assert [(lot["remaining"], lot["expires_at"]) for lot in pool["lots"]] == [(50, None)]
        assert pool["next_expiry"] is None
