"""Mass assignment on the admin PATCH routes: a body naming a field the route does not let its caller set (the
tenant, the account, a balance, the status, the email, the credentials version, ...) is refused whole with 422,
whoever sends it, and changes nothing: not the row, not the ledger, not the audit trail. (The swap submit has the
same test: tests/jobs/test_upload_limits.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import MakeCaller


def _row(session: Session, table: str, row_id: int) -> dict[str, Any]:
    session.rollback()  # a fresh snapshot
    row = session.execute(text(f"SELECT * FROM {table} WHERE id = :id"), {"id": row_id}).mappings().one()
    return dict(row)


def _ledger(session: Session) -> tuple[int, int]:
    """(transactions, the balances' total): any money moved shows here."""
    row = session.execute(
        text(
            "SELECT (SELECT count(*) FROM ledger_transactions), (SELECT coalesce(sum(balance), 0) FROM ledger_accounts)"
        )
    ).one()
    return int(row[0]), int(row[1])


def _audited(session: Session, action_prefix: str) -> int:
    return int(
        session.execute(
            text("SELECT count(*) FROM audit_events WHERE action LIKE :prefix"), {"prefix": f"{action_prefix}%"}
        ).scalar_one()
    )


def _assert_refused(response: Any, fields: set[str]) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_error"
    refused = {e["location"][-1] for e in body["errors"] if e["type"] == "extra_forbidden"}
    assert refused == fields, body["errors"]


def _user_bodies(other_tenant_id: int, other_account_id: int) -> list[dict[str, Any]]:
    return [
        {"tenant_id": other_tenant_id},
        {"account_id": other_account_id},
        {"balance": 1_000_000},
        {"available": 1_000_000, "held": 0},
        {"status": "active"},
        {"email": "someone.else@example.test"},
        {"credentials_version": 1},
        {"password_hash": "$argon2id$v=19$m=65536,t=3,p=4$forged"},
        {"id": 1},
        {"created_at": "2020-01-01T00:00:00Z"},
        # An allowed field does not carry a forbidden one through: the whole body is refused.
        {"name": "Renamed", "tenant_id": other_tenant_id},
        {"name": "Renamed", "account_id": other_account_id, "status": "active"},
    ]


@pytest.mark.parametrize("manager_role", [Role.tenant_admin, Role.platform_admin])
def test_patching_a_user_with_fields_it_may_not_set_changes_nothing(
    client: TestClient, session: Session, make_caller: MakeCaller, manager_role: Role
) -> None:
    tenant, other = create_tenant(session), create_tenant(session)
    manager = make_caller(manager_role, tenant=tenant if manager_role is Role.tenant_admin else None)
    target = create_user(session, tenant=tenant)
    fund(session, account_id=target.account_id, amount=7)
    session.execute(text("UPDATE users SET status = 'frozen' WHERE id = :id"), {"id": target.id})  # for "status"
    session.commit()
    stranger = create_user(session, tenant=other)
    before, ledger_before, audited_before = (
        _row(session, "users", target.id),
        _ledger(session),
        _audited(session, "user."),
    )

    for body in _user_bodies(other.id, stranger.account_id):
        response = client.patch(f"/admin/v1/users/{target.id}", json=body, headers=manager.headers)
        _assert_refused(response, set(body) - {"name"})
        assert _row(session, "users", target.id) == before, body
    assert _ledger(session) == ledger_before
    assert _audited(session, "user.") == audited_before
    # The same caller may still change what the route allows.
    allowed = client.patch(f"/admin/v1/users/{target.id}", json={"name": "Renamed"}, headers=manager.headers)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["name"] == "Renamed"
    after = _row(session, "users", target.id)
    assert {k: v for k, v in after.items() if k not in ("name", "updated_at")} == {
        k: v for k, v in before.items() if k not in ("name", "updated_at")
    }


def test_patching_a_tenant_with_fields_it_may_not_set_changes_nothing(
    client: TestClient, session: Session, make_caller: MakeCaller
) -> None:
    tenant, other = create_tenant(session), create_tenant(session)
    fund(session, account_id=tenant.pool_account_id, amount=11)
    admin = make_caller(Role.platform_admin)
    before, ledger_before, audited_before = (
        _row(session, "tenants", tenant.id),
        _ledger(session),
        _audited(session, "tenant."),
    )
    bodies: list[dict[str, Any]] = [
        {"id": other.id},
        {"pool_account_id": other.pool_account_id},
        {"balance": 1_000_000},
        {"tenant_id": other.id},
        {"account_id": other.pool_account_id},
        {"webhook_secret": "whsec_chosen-by-the-caller"},
        {"created_at": "2020-01-01T00:00:00Z"},
        {"price": 0},
        {"tokens_per_unit": 0},
        {"name": "Renamed Co", "pool_account_id": other.pool_account_id},
        {"plan": "enterprise", "balance": 1_000_000},
    ]
    for body in bodies:
        response = client.patch(f"/admin/v1/tenants/{tenant.id}", json=body, headers=admin.headers)
        _assert_refused(response, set(body) - {"name", "plan"})
        assert _row(session, "tenants", tenant.id) == before, body
    assert _ledger(session) == ledger_before
    assert _audited(session, "tenant.") == audited_before


def test_a_tenant_admin_cannot_patch_its_own_tenant_at_all(
    client: TestClient, session: Session, make_caller: MakeCaller
) -> None:
    """The tenant's plan and status are the platform's to set: the route needs tenants:write, which no tenant
    role holds, so even fields the schema knows are refused (403) and nothing changes."""
    tenant = create_tenant(session)
    owner = make_caller(Role.tenant_admin, tenant=tenant)
    before = _row(session, "tenants", tenant.id)
    for body in ({"plan": "enterprise"}, {"status": "active"}, {"name": "Mine Now"}, {"pool_account_id": 1}):
        response = client.patch(f"/admin/v1/tenants/{tenant.id}", json=body, headers=owner.headers)
        assert response.status_code == 403, response.text
        assert _row(session, "tenants", tenant.id) == before
