"""User labels through the API: set on create and update by whoever manages the user (lower-cased, deduplicated),
audited, a filter of the users list, and refused with 422 when malformed or too many. A tenant's recurring grants
select on them (test_grants.py, test_grant_issuing.py)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.users.orm import Role
from tests.factories import create_tenant
from tests.platform.conftest import Caller, MakeCaller


def problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def audited(session: Session, action: str) -> list[dict[str, Any]]:
    session.rollback()
    rows = session.execute(
        text("SELECT target_id, before, after FROM audit_events WHERE action = :a ORDER BY id"), {"a": action}
    ).mappings()
    return [dict(r) for r in rows]


class TestUserLabels:
    def test_labels_are_set_on_create_and_update_and_filter_the_users_list(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        made = client.post(
            "/admin/v1/users",
            json={"email": "vip@example.test", "role": "member", "labels": ["VIP", "beta", "vip"]},
            headers=admin.headers,
        )
        assert made.status_code == 201, made.text
        assert made.json()["labels"] == ["beta", "vip"]
        user_id = made.json()["id"]
        changed = client.patch(f"/admin/v1/users/{user_id}", json={"labels": ["gold"]}, headers=admin.headers)
        assert changed.json()["labels"] == ["gold"]
        listed = client.get("/admin/v1/users", params={"label": "gold"}, headers=admin.headers).json()["items"]
        assert [u["id"] for u in listed] == [user_id]
        assert client.get("/admin/v1/users", params={"label": "vip"}, headers=admin.headers).json()["items"] == []
        (event,) = [e for e in audited(session, "user.update") if e["target_id"] == str(user_id)]
        assert (event["before"]["labels"], event["after"]["labels"]) == (["beta", "vip"], ["gold"])

    @pytest.mark.parametrize("labels", [["bad label"], ["UPPER!"], [""], ["x" * 33], [f"l{i}" for i in range(17)]])
    def test_a_bad_label_is_422(
        self, client: TestClient, session: Session, make_caller: MakeCaller, labels: list[str]
    ) -> None:
        admin: Caller = make_caller(Role.tenant_admin, create_tenant(session))
        body = {"email": "l@example.test", "role": "member", "labels": labels}
        problem(client.post("/admin/v1/users", json=body, headers=admin.headers), 422, "validation_error")
