"""Plain helpers shared by the recurring grants' API tests (test_grants.py, test_grant_approvals.py). No fixtures
live here."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.platform.conftest import Caller

GRANTS = "/admin/v1/grants"
APPROVALS = "/admin/v1/recharge-approvals"


def plan_body(**fields: Any) -> dict[str, Any]:
    body = {"name": "daily free", "scope": "plan", "plan": "free", "amount": 5, "period": "day", "funding": "platform"}
    return body | fields


def tenant_body(**fields: Any) -> dict[str, Any]:
    return {"name": "vip daily", "scope": "tenant", "amount": 5, "period": "day", "funding": "tenant_pool"} | fields


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def held(response: httpx.Response) -> dict[str, Any]:
    """The approval a held grant request answered with (202): a `grant` approval, pending."""
    assert response.status_code == 202, response.text
    approval: dict[str, Any] = response.json()
    assert (approval["kind"], approval["status"]) == ("grant", "pending"), approval
    return approval


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def decide(client: TestClient, caller: Caller, approval_id: int, decision: str = "approve") -> httpx.Response:
    return client.post(f"{APPROVALS}/{approval_id}/{decision}", json={}, headers=caller.headers)


def approved(client: TestClient, approver: Caller, approval: dict[str, Any]) -> dict[str, Any]:
    """Approve a held grant request; returns the grant it made or changed, as the API reads it."""
    response = decide(client, approver, approval["id"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"
    grant = client.get(f"{GRANTS}/{response.json()['result']['grant_id']}", headers=approver.headers)
    assert grant.status_code == 200, grant.text
    body: dict[str, Any] = grant.json()
    assert body["approval_id"] == approval["id"]
    return body


def made(client: TestClient, requester: Caller, approver: Caller, body: dict[str, Any]) -> dict[str, Any]:
    """A platform-funded grant as staff make one: asked for by `requester`, approved by `approver`."""
    return approved(client, approver, held(client.post(GRANTS, json=body, headers=requester.headers)))


def audited(session: Session, action: str) -> list[dict[str, Any]]:
    session.rollback()
    rows = session.execute(
        text(
            "SELECT actor_user_id, target_id, tenant_id, before, after FROM audit_events WHERE action = :a ORDER BY id"
        ),
        {"a": action},
    ).mappings()
    return [dict(r) for r in rows]
