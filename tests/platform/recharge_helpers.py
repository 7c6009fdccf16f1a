"""Plain helpers shared by the recharge tests (single, batch, concurrency). No fixtures live here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.ledger.service import get_balance
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import bearer, create_user, fund, issue_key

SINGLE = "/admin/v1/recharges"
BATCH = "/admin/v1/recharges/batch"
APPROVALS = "/admin/v1/recharge-approvals"
ADJUSTMENTS = "/admin/v1/adjustments"


@dataclass(frozen=True)
class Actor:
    user: User
    key: str

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = bearer(self.key)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers


def staff(session: Session, settings: Settings, role: Role = Role.operator) -> Actor:
    user = create_user(session, role=role, password=None)
    return Actor(user, issue_key(session, settings, user))


def tenant_admin(session: Session, settings: Settings, tenant: Tenant) -> Actor:
    user = create_user(session, tenant=tenant, role=Role.tenant_admin, password=None)
    return Actor(user, issue_key(session, settings, user))


def balance_of(session: Session, account_id: int) -> int:
    return get_balance(session, account_id=account_id).balance


def fund_pool(session: Session, tenant: Tenant, amount: int) -> None:
    fund(session, account_id=tenant.pool_account_id, amount=amount)


def freeze(session: Session, user: User) -> None:
    session.execute(text("UPDATE users SET status = 'frozen' WHERE id = :id"), {"id": user.id})
    session.commit()


def count(session: Session, table: str) -> int:
    return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def recharge_transactions(session: Session) -> int:
    """Recharge transactions other than the factories' direct funding."""
    return int(
        session.execute(
            text("SELECT count(*) FROM ledger_transactions WHERE kind = 'recharge' AND actor <> 'test'")
        ).scalar_one()
    )


def batch_entries(session: Session, transaction_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        text(
            "SELECT account_id, amount, row_no, reference FROM ledger_entries "
            "WHERE transaction_id = :id ORDER BY row_no NULLS FIRST"
        ),
        {"id": transaction_id},
    )
    return [dict(r._mapping) for r in rows]


def audit_events(session: Session, action: str) -> list[Any]:
    return list(
        session.execute(
            text(
                "SELECT actor_user_id, actor_api_key_id, tenant_id, target_type, target_id, after "
                "FROM audit_events WHERE action = :action ORDER BY id"
            ),
            {"action": action},
        )
    )


def post_batch(
    client: TestClient,
    actor: Actor,
    body: str | bytes | dict[str, Any],
    *,
    key: str | None,
    mode: str = "atomic",
    dry_run: bool = False,
    reason: str | None = "test batch",
    tenant_id: int | None = None,
    content_type: str | None = None,
) -> httpx.Response:
    params: dict[str, str] = {"mode": mode, "dry_run": str(dry_run).lower()}
    if reason is not None:
        params["reason"] = reason
    if tenant_id is not None:
        params["tenant_id"] = str(tenant_id)
    if isinstance(body, dict):
        content = json.dumps(body).encode()
        content_type = content_type or "application/json"
    else:
        content = body.encode() if isinstance(body, str) else body
        content_type = content_type or "text/csv"
    headers = {**actor.headers(key), "Content-Type": content_type}
    return client.post(BATCH, params=params, content=content, headers=headers)


def csv_body(header: str, *lines: str) -> str:
    return "\n".join((header, *lines)) + "\n"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    return body


def seed_users(session: Session, tenant: Tenant, n: int, prefix: str) -> list[tuple[int, str, int]]:
    """`n` member users of `tenant`, created set-based in two statements: (user_id, email, account_id)."""
    rows = session.execute(
        text(
            """
            WITH accounts AS (
                INSERT INTO ledger_accounts (kind, tenant_id, balance_tracked)
                SELECT 'user', :tenant_id, true FROM generate_series(1, :n)
                RETURNING id
            ),
            numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM accounts)
            INSERT INTO users (tenant_id, email, role, status, account_id)
            SELECT :tenant_id, :prefix || numbered.n || '@bulk.example.test', 'member', 'active', numbered.id
            FROM numbered
            RETURNING id, email, account_id
            """
        ),
        {"tenant_id": tenant.id, "n": n, "prefix": prefix},
    ).all()
    session.commit()
    return sorted(((r.id, r.email, r.account_id) for r in rows), key=lambda r: r[0])


def held(response: httpx.Response) -> dict[str, Any]:
    """The approval a request was held by (202, pending)."""
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "pending"
    return body


def approve(client: TestClient, actor: Actor, approval_id: int, note: str | None = None) -> httpx.Response:
    # The body (a note) is optional.
    body = {"json": {"note": note}} if note is not None else {}
    return client.post(f"{APPROVALS}/{approval_id}/approve", headers=actor.headers(), **body)


def reject(client: TestClient, actor: Actor, approval_id: int, note: str | None = None) -> httpx.Response:
    return client.post(f"{APPROVALS}/{approval_id}/reject", json={"note": note}, headers=actor.headers())


def reversal_path(transaction_id: int) -> str:
    return f"/admin/v1/transactions/{transaction_id}/reversal"
