"""Reading recharge batches and the reconciliation report over HTTP."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import MakeCaller


def _batch(client: TestClient, headers: dict[str, str], key: str, csv: str, **params: str) -> dict:
    response = client.post(
        "/admin/v1/recharges/batch",
        params={"mode": "partial", "reason": "monthly", **params},
        content=csv,
        headers={**headers, "Idempotency-Key": key, "Content-Type": "text/csv"},
    )
    assert response.status_code == 201, response.text
    return response.json()


class TestBatchLog:
    def test_batches_are_listed_newest_first_and_readable_with_their_failures(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        tenant = create_tenant(session)
        alice = create_user(session, tenant=tenant)
        first = _batch(client, operator.headers, "b1", f"email,amount\n{alice.email},5\nnobody@x.test,5\n")
        second = _batch(client, operator.headers, "b2", f"user_id,amount\n{alice.id},7\n")

        listed = client.get("/admin/v1/recharges/batches", headers=operator.headers, params={"limit": 1})
        assert listed.status_code == 200
        page = listed.json()
        assert [b["id"] for b in page["items"]] == [second["batch_id"]]
        rest = client.get(
            "/admin/v1/recharges/batches", headers=operator.headers, params={"cursor": page["next_cursor"]}
        ).json()
        assert [b["id"] for b in rest["items"]] == [first["batch_id"]]
        assert rest["next_cursor"] is None

        detail = client.get(f"/admin/v1/recharges/batches/{first['batch_id']}", headers=operator.headers).json()
        assert (detail["row_count"], detail["applied_count"], detail["failed_count"]) == (2, 1, 1)
        assert detail["total_amount"] == 5
        assert detail["result"]["failed"] == [
            {"row": 2, "code": "unknown_user", "detail": "no such user", "email": "nobody@x.test", "user_id": None}
        ]

    def test_a_tenant_admin_sees_only_its_tenants_batches(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant_a, tenant_b = create_tenant(session), create_tenant(session)
        fund(session, account_id=tenant_a.pool_account_id, amount=100)
        fund(session, account_id=tenant_b.pool_account_id, amount=100)
        admin_a = make_caller(Role.tenant_admin, tenant=tenant_a)
        admin_b = make_caller(Role.tenant_admin, tenant=tenant_b)
        user_a = create_user(session, tenant=tenant_a)
        user_b = create_user(session, tenant=tenant_b)
        mine = _batch(client, admin_a.headers, "a", f"email,amount\n{user_a.email},3\n")
        theirs = _batch(client, admin_b.headers, "b", f"email,amount\n{user_b.email},3\n")

        listed = client.get("/admin/v1/recharges/batches", headers=admin_a.headers).json()
        assert [b["id"] for b in listed["items"]] == [mine["batch_id"]]
        hidden = client.get(f"/admin/v1/recharges/batches/{theirs['batch_id']}", headers=admin_a.headers)
        assert hidden.status_code == 404
        assert hidden.json()["code"] == "batch_not_found"
        filtered = client.get("/admin/v1/recharges/batches", headers=admin_a.headers, params={"tenant_id": tenant_b.id})
        assert filtered.status_code == 404


class TestReconciliationEndpoint:
    def test_balanced_books_report_their_totals(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        finance = make_caller(Role.finance)
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=40)
        report = client.get("/admin/v1/reconciliation", headers=finance.headers)
        assert report.status_code == 200
        body = report.json()
        assert body["balanced"] is True
        assert body["discrepancies"] == []
        assert body["totals"]["issued"] == 40
        assert body["totals"]["outstanding"] == 40
        assert "balance_mismatch" in body["checks"]

    @pytest.mark.no_invariants
    def test_a_planted_discrepancy_is_reported_with_its_account(
        self, client: TestClient, session: Session, owner_engine: Engine, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=10)
        with owner_engine.begin() as conn:
            # Bypass the application (and its triggers) the way a bad manual fix would.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("UPDATE ledger_accounts SET balance = 12 WHERE id = :id"), {"id": user.account_id})
        body = client.get("/admin/v1/reconciliation", headers=operator.headers).json()
        assert body["balanced"] is False
        mismatch = next(d for d in body["discrepancies"] if d["check"] == "balance_mismatch")
        assert mismatch["ids"] == [user.account_id]
        assert mismatch["details"] == [2]

    def test_tenant_admins_and_members_cannot_read_it(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        for role in (Role.tenant_admin, Role.member):
            caller = make_caller(role, tenant=tenant)
            response = client.get("/admin/v1/reconciliation", headers=caller.headers)
            assert response.status_code == 403
            # Members lack the scope; tenant admins hold reports:read (their tenant's views) but not this report.
            assert response.json()["code"] == ("forbidden" if role is Role.tenant_admin else "insufficient_scope")
