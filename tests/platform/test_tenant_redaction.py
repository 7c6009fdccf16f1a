"""What a tenant admin reads never names another tenant's users or a staff address: a staff batch scoped to the
tenant, naming a user of another tenant (by email and by id) and a staff user, is held, approved, then read by the
tenant's admin through every route that shows it (approvals, audit events, the finance audit log and its exports,
the batch), both for what is written now and for decision events recorded before they kept counts only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import create_tenant, create_user
from tests.platform.conftest import Caller
from tests.platform.recharge_helpers import (
    APPROVALS,
    Actor,
    approve,
    audit_events,
    held,
    post_batch,
    staff,
    tenant_admin,
)
from tests.platform.test_finance_exports import FINANCE, export, parse_csv, parse_jsonl

THRESHOLD = 100_000  # the default approval_threshold_amount
OUTSIDER = "user_of_other_tenant"


@dataclass
class World:
    tenant: Tenant  # A
    admin: Actor  # tenant A's admin
    member: User  # of A
    other_members: list[User]  # of tenant B
    requester: Actor  # operators
    approver: Actor
    finance: Actor

    @property
    def hidden_emails(self) -> set[str]:
        return {u.email for u in self.other_members} | {self.requester.user.email, self.approver.user.email}

    @property
    def hidden_user_ids(self) -> set[int]:
        return {u.id for u in self.other_members} | {self.requester.user.id, self.approver.user.id}


@pytest.fixture
def world(session: Session, settings: Settings) -> World:
    tenant, other = create_tenant(session, name="tenant-a"), create_tenant(session, name="tenant-b")
    return World(
        tenant=tenant,
        admin=tenant_admin(session, settings, tenant),
        member=create_user(session, tenant=tenant, password=None),
        other_members=[create_user(session, tenant=other, password=None) for _ in range(2)],
        requester=staff(session, settings, Role.operator),
        approver=staff(session, settings, Role.operator),
        finance=staff(session, settings, Role.finance),
    )


@pytest.fixture
def approved_batch(client: TestClient, world: World) -> dict[str, Any]:
    """A staff batch scoped to tenant A naming B's users and a staff user, held, then approved: the approval."""
    b1, b2 = world.other_members
    items = [
        {"email": world.member.email, "amount": THRESHOLD + 1},  # above the threshold: the batch is held
        {"email": b1.email, "amount": 5},
        {"user_id": b2.id, "amount": 5},
        {"email": world.approver.user.email, "amount": 5},  # a staff address
    ]
    body = {"reason": "quarterly", "items": items}
    approval = held(post_batch(client, world.requester, body, key="scoped", mode="partial", tenant_id=world.tenant.id))
    assert approval["tenant_id"] == world.tenant.id
    approved = approve(client, world.approver, approval["id"])
    assert approved.status_code == 200, approved.text
    return dict(approved.json())


def _identifiers(value: Any) -> Iterator[Any]:
    """Every value under an `email` or `user_id` key, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("email", "user_id"):
                yield item
            yield from _identifiers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _identifiers(item)


def _failed_rows(value: Any) -> Iterator[list[Any]]:
    """Every list under a `failed` key, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "failed" and isinstance(item, list):
                yield item
            yield from _failed_rows(item)
    elif isinstance(value, list):
        for item in value:
            yield from _failed_rows(item)


def _assert_names_nobody_outside(world: World, route: str, body: str, documents: Any) -> None:
    for email in world.hidden_emails:
        assert email not in body, (route, email)
    named = set(_identifiers(documents))
    assert not named & world.hidden_user_ids, (route, named & world.hidden_user_ids)


def _csv_documents(body: str) -> list[Any]:
    rows, _ = parse_csv(body)
    return [json.loads(row["after"]) if row["after"] else None for row in rows]


AUDIT_ROUTES = ("/admin/v1/audit-events?limit=200", f"{FINANCE}/audit?limit=200")


def _reads(client: TestClient, actor: Actor, *routes: str) -> dict[str, tuple[str, Any]]:
    """`routes` and the audit log's two exports, read by `actor`: route -> (body, parsed documents)."""
    reads: dict[str, tuple[str, Any]] = {}
    for route in routes:
        response = client.get(route, headers=actor.headers())
        assert response.status_code == 200, (route, response.text)
        reads[route] = (response.text, response.json())
    caller = Caller(actor.user, actor.key)
    jsonl = export(client, caller, "audit", "jsonl")
    reads["audit export (jsonl)"] = (jsonl, parse_jsonl(jsonl)[0])
    csv_body = export(client, caller, "audit", "csv")
    reads["audit export (csv)"] = (csv_body, _csv_documents(csv_body))
    return reads


class TestATenantAdminNeverSeesOutsiders:
    def test_every_route_after_a_staff_batch_scoped_to_its_tenant(
        self, client: TestClient, session: Session, world: World, approved_batch: dict[str, Any]
    ) -> None:
        # Staff see who every failed row named (so the reads below have something to hide).
        staff_view = client.get(f"{APPROVALS}/{approved_batch['id']}", headers=world.finance.headers()).json()
        failed = staff_view["result"]["failed"]
        assert [row["code"] for row in failed] == [OUTSIDER] * 3
        assert {row.get("email") for row in failed} >= {world.other_members[0].email, world.approver.user.email}
        batch = client.get(
            f"/admin/v1/recharges/batches/{approved_batch['result']['batch_id']}", headers=world.finance.headers()
        ).json()
        assert world.other_members[1].id in {row["user_id"] for row in batch["result"]["failed"]}
        batch_route = f"/admin/v1/recharges/batches/{approved_batch['result']['batch_id']}"
        approval_route = f"{APPROVALS}/{approved_batch['id']}"
        reads = _reads(client, world.admin, APPROVALS, approval_route, batch_route, *AUDIT_ROUTES)
        for route, (body, documents) in reads.items():
            _assert_names_nobody_outside(world, route, body, documents)
        # The tenant still sees which rows failed and why, and the applied total.
        detail = reads[approval_route][1]
        assert [(row["row"], row["code"]) for row in detail["result"]["failed"]] == [(n, OUTSIDER) for n in (2, 3, 4)]
        assert (detail["result"]["applied"], detail["result"]["total_amount"]) == (1, THRESHOLD + 1)

    def test_the_decision_event_records_counts_not_rows(
        self, session: Session, world: World, approved_batch: dict[str, Any]
    ) -> None:
        [event] = audit_events(session, "recharge.approval.approve")
        assert event.tenant_id == world.tenant.id
        result = event.after["result"]
        assert (result["failed"], result["applied"], result["batch_id"]) == (3, 1, approved_batch["result"]["batch_id"])

    def test_decision_events_recorded_with_rows_are_redacted_on_read(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        b1, b2 = world.other_members
        failed = [
            {"row": 2, "code": OUTSIDER, "detail": "the user belongs to another tenant", "email": b1.email},
            {"row": 3, "code": OUTSIDER, "detail": "the user belongs to another tenant", "user_id": b2.id},
            {
                "row": 4,
                "code": OUTSIDER,
                "detail": "the user belongs to another tenant",
                "email": world.approver.user.email,
            },
            {"row": 5, "code": "user_frozen", "detail": "the user is frozen", "email": world.member.email},
        ]
        # What a decision's audit event held before decisions recorded counts only.
        session.execute(
            text(
                "INSERT INTO audit_events (actor_user_id, tenant_id, action, target_type, target_id, after) "
                "VALUES (:actor, :tenant, 'recharge.approval.approve', 'recharge_approval', '1', CAST(:after AS jsonb))"
            ),
            {
                "actor": world.approver.user.id,
                "tenant": world.tenant.id,
                "after": json.dumps({"status": "approved", "result": {"batch_id": 1, "failed": failed}}),
            },
        )
        session.commit()
        for route, (body, documents) in _reads(client, world.admin, *AUDIT_ROUTES).items():
            _assert_names_nobody_outside(world, route, body, documents)
            # Every row is still there; only who the outsider rows named is gone (the tenant's own user stays).
            [rows] = list(_failed_rows(documents))
            assert [(row["row"], row.get("email"), row.get("user_id")) for row in rows] == [
                (2, None, None),
                (3, None, None),
                (4, None, None),
                (5, world.member.email, None),
            ], route
        # Staff read the event as it was recorded.
        for route, (_, documents) in _reads(client, world.finance, *AUDIT_ROUTES).items():
            [rows] = list(_failed_rows(documents))
            assert rows == failed, route
