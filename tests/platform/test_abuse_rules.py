"""Abuse rules over the admin API (each change audited and mirrored into Redis, only ever newer over older), and the
review of their triggers (resolve once, with an optional unfreeze under the unfreeze's own checks). Who may call
each route: test_access_matrix.py and test_tenancy.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint.abuse import counters
from facemint.abuse.orm import RuleAction, RuleKind
from facemint.audit.orm import AuditEvent
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import add_abuse_rule, create_tenant, record_abuse_trigger
from tests.platform.conftest import Caller, MakeCaller

JOBS = {"kind": "jobs_per_window", "action": "freeze", "max_jobs": 20, "window_seconds": 60}
FACES = {"kind": "same_face_per_window", "action": "flag", "max_jobs": 3, "window_seconds": 3600}
SPEND = {
    "kind": "spend_rate",
    "action": "flag",
    "multiple": 4.0,
    "baseline_hours": 24,
    "window_seconds": 900,
    "min_tokens": 100,
}


def problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    if code is not None:
        assert body["code"] == code, body
    return body


def mirrored(redis: Redis, tenant_id: int) -> dict[str, Any]:
    raw = redis.get(counters.rules_key(tenant_id))
    assert raw is not None
    copy: dict[str, Any] = json.loads(raw)
    return copy


def version(session: Session, tenant_id: int) -> int:
    session.expire_all()
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None
    return tenant.abuse_rules_version


class TestRules:
    @pytest.fixture
    def admin(self, session: Session, make_caller: MakeCaller) -> Caller:
        return make_caller(Role.tenant_admin, create_tenant(session))

    def path(self, admin: Caller, suffix: str = "") -> str:
        return f"/admin/v1/tenants/{admin.tenant_id}/abuse-rules{suffix}"

    def test_a_tenant_admin_manages_its_rules_and_redis_follows_every_change(
        self, client: TestClient, session: Session, redis_client: Redis, admin: Caller
    ) -> None:
        created = []
        for body in (JOBS, FACES, SPEND):
            response = client.post(self.path(admin), json=body, headers=admin.headers)
            assert response.status_code == 201, response.text
            created.append(response.json())
        assert [{k: r[k] for k in body} for r, body in zip(created, (JOBS, FACES, SPEND), strict=True)] == [
            JOBS,
            FACES,
            SPEND,
        ]
        assert client.get(self.path(admin), headers=admin.headers).json() == created
        copy = mirrored(redis_client, admin.tenant_id or 0)
        assert copy["v"] == version(session, admin.tenant_id or 0) == 3
        assert [(r["id"], r["kind"], r["max"], r["floor"]) for r in copy["rules"]] == [
            (created[0]["id"], "jobs_per_window", 20, None),
            (created[1]["id"], "same_face_per_window", 3, None),
            (created[2]["id"], "spend_rate", None, 100),
        ]

        jobs_rule = created[0]["id"]
        changed = client.patch(self.path(admin, f"/{jobs_rule}"), json={"max_jobs": 30}, headers=admin.headers)
        assert changed.json()["max_jobs"] == 30
        assert mirrored(redis_client, admin.tenant_id or 0)["rules"][0]["max"] == 30
        # Disabled: kept (and listed), not mirrored.
        off = client.patch(self.path(admin, f"/{jobs_rule}"), json={"enabled": False}, headers=admin.headers)
        assert off.json()["enabled"] is False
        assert [r["id"] for r in mirrored(redis_client, admin.tenant_id or 0)["rules"]] == [
            created[1]["id"],
            created[2]["id"],
        ]
        # Retired: gone from the list and from Redis; its row stays.
        deleted = client.delete(self.path(admin, f"/{created[1]['id']}"), headers=admin.headers)
        assert deleted.status_code == 204, deleted.text
        assert [r["id"] for r in client.get(self.path(admin), headers=admin.headers).json()] == [
            jobs_rule,
            created[2]["id"],
        ]
        problem(
            client.get(self.path(admin, f"/{created[1]['id']}"), headers=admin.headers), 404, "abuse_rule_not_found"
        )
        copy = mirrored(redis_client, admin.tenant_id or 0)
        assert [r["id"] for r in copy["rules"]] == [created[2]["id"]]
        assert copy["v"] == version(session, admin.tenant_id or 0) == 6

        trail = session.scalars(
            select(AuditEvent).where(AuditEvent.target_type == "abuse_rule").order_by(AuditEvent.id)
        ).all()
        assert [(e.action, e.actor_user_id) for e in trail] == [
            ("abuse_rule.create", admin.id),
            ("abuse_rule.create", admin.id),
            ("abuse_rule.create", admin.id),
            ("abuse_rule.update", admin.id),
            ("abuse_rule.update", admin.id),
            ("abuse_rule.delete", admin.id),
        ]
        assert (trail[3].before["max_jobs"], trail[3].after["max_jobs"]) == (20, 30)  # type: ignore[index]

    @pytest.mark.parametrize(
        "body",
        [
            {**JOBS, "max_jobs": None},
            {**JOBS, "multiple": 3.0},
            {**FACES, "min_tokens": 10},
            {k: v for k, v in SPEND.items() if k != "min_tokens"},
            {**SPEND, "max_jobs": 5},
            {**SPEND, "multiple": 1.0},
            {**SPEND, "baseline_hours": 1, "window_seconds": 7200},
            {**JOBS, "window_seconds": 0},
            {**JOBS, "window_seconds": 86401},
            {**JOBS, "action": "ban"},
            {**JOBS, "kind": "velocity"},
            {**JOBS, "tenant_id": 1},
        ],
    )
    def test_a_rule_takes_exactly_its_kinds_parameters(
        self, client: TestClient, redis_client: Redis, admin: Caller, body: dict[str, Any]
    ) -> None:
        problem(client.post(self.path(admin), json=body, headers=admin.headers), 422)
        assert client.get(self.path(admin), headers=admin.headers).json() == []

    @pytest.mark.parametrize(
        "change",
        [{"multiple": 2.0}, {"max_jobs": None}, {"enabled": None}, {"window_seconds": None}],
    )
    def test_a_change_must_leave_the_rule_fitting_its_kind(
        self, client: TestClient, admin: Caller, change: dict[str, Any]
    ) -> None:
        rule = client.post(self.path(admin), json=JOBS, headers=admin.headers).json()
        problem(client.patch(self.path(admin, f"/{rule['id']}"), json=change, headers=admin.headers), 422)
        assert client.get(self.path(admin, f"/{rule['id']}"), headers=admin.headers).json() == rule

    def test_the_kind_never_changes(self, client: TestClient, admin: Caller) -> None:
        rule = client.post(self.path(admin), json=JOBS, headers=admin.headers).json()
        response = client.patch(self.path(admin, f"/{rule['id']}"), json={"kind": "spend_rate"}, headers=admin.headers)
        problem(response, 422)

    def test_the_copy_in_redis_is_replaced_only_by_a_newer_version(
        self, client: TestClient, session: Session, redis_client: Redis, admin: Caller
    ) -> None:
        """A publish that arrives late (its change committed before another's, its write after) is refused: the
        copy keeps the newest version, whatever order the after-commit writes run in."""
        client.post(self.path(admin), json=JOBS, headers=admin.headers)
        tenant_id = admin.tenant_id or 0
        older = counters.load_rule_set(session, tenant_id=tenant_id)
        client.post(self.path(admin), json=FACES, headers=admin.headers)
        assert not counters.publish(redis_client, tenant_id=tenant_id, rule_set=older)
        assert len(mirrored(redis_client, tenant_id)["rules"]) == 2


class TestTriggerReview:
    @pytest.fixture
    def admin(self, session: Session, make_caller: MakeCaller) -> Caller:
        return make_caller(Role.tenant_admin, create_tenant(session))

    @pytest.fixture
    def rule(self, session: Session, redis_client: Redis, admin: Caller) -> Any:
        return add_abuse_rule(
            session,
            redis_client,
            tenant_id=admin.tenant_id or 0,
            kind=RuleKind.jobs_per_window,
            action=RuleAction.freeze,
            max_jobs=5,
            window_seconds=60,
        )

    def test_resolving_with_an_unfreeze_unfreezes_and_starts_the_counts_afresh(
        self,
        client: TestClient,
        session: Session,
        redis_client: Redis,
        make_caller: MakeCaller,
        admin: Caller,
        rule: Any,
    ) -> None:
        member = make_caller(Role.member, session.get(Tenant, admin.tenant_id))
        trigger = record_abuse_trigger(session, redis_client, rule=rule, user_id=member.id)
        frozen = client.post(f"/admin/v1/users/{member.id}/freeze", headers=admin.headers)
        assert frozen.json()["status"] == "frozen"
        listed = client.get("/admin/v1/abuse/triggers", params={"status": "open"}, headers=admin.headers).json()
        assert [t["id"] for t in listed["items"]] == [trigger.id]

        response = client.post(
            f"/admin/v1/abuse/triggers/{trigger.id}/resolve",
            json={"note": "a load test of theirs", "unfreeze": True},
            headers=admin.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["note"], body["unfroze"], body["resolved_by_user_id"]) == (
            "resolved",
            "a load test of theirs",
            True,
            admin.id,
        )
        session.expire_all()
        assert session.get(User, member.id).status == "active"  # type: ignore[union-attr]
        assert redis_client.get(counters.GENERATION_KEY.format(member.id)) == b"1"
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.actor_user_id == admin.id).order_by(AuditEvent.id)
        ).all()
        assert actions[-2:] == ["user.unfreeze", "abuse.trigger.resolve"]
        # Once only.
        again = client.post(f"/admin/v1/abuse/triggers/{trigger.id}/resolve", json={}, headers=admin.headers)
        problem(again, 409, "abuse_trigger_resolved")
        assert client.get("/admin/v1/abuse/triggers", params={"status": "open"}, headers=admin.headers).json() == {
            "items": [],
            "next_cursor": None,
        }

    def test_an_unfreeze_the_caller_may_not_give_leaves_the_trigger_open(
        self,
        client: TestClient,
        session: Session,
        redis_client: Redis,
        make_caller: MakeCaller,
        admin: Caller,
        rule: Any,
    ) -> None:
        """A tenant admin manages members, not its peers: resolving a peer's trigger with an unfreeze is refused
        whole (the resolve is not kept without the unfreeze it asked for)."""
        peer = make_caller(Role.tenant_admin, session.get(Tenant, admin.tenant_id))
        trigger = record_abuse_trigger(session, redis_client, rule=rule, user_id=peer.id)
        response = client.post(
            f"/admin/v1/abuse/triggers/{trigger.id}/resolve", json={"unfreeze": True}, headers=admin.headers
        )
        problem(response, 403, "forbidden")
        assert client.get(f"/admin/v1/abuse/triggers/{trigger.id}", headers=admin.headers).json()["status"] == "open"
        # Without the unfreeze it may close it.
        closed = client.post(f"/admin/v1/abuse/triggers/{trigger.id}/resolve", json={}, headers=admin.headers)
        assert (closed.json()["status"], closed.json()["unfroze"]) == ("resolved", False)

    def test_unfreezing_a_user_directly_starts_its_counts_afresh_too(
        self, client: TestClient, session: Session, redis_client: Redis, make_caller: MakeCaller, admin: Caller
    ) -> None:
        member = make_caller(Role.member, session.get(Tenant, admin.tenant_id))
        client.post(f"/admin/v1/users/{member.id}/freeze", headers=admin.headers)
        assert client.post(f"/admin/v1/users/{member.id}/unfreeze", headers=admin.headers).json()["status"] == "active"
        assert redis_client.get(counters.GENERATION_KEY.format(member.id)) == b"1"
        # Unfreezing an active user changes nothing, counters included.
        client.post(f"/admin/v1/users/{member.id}/unfreeze", headers=admin.headers)
        assert redis_client.get(counters.GENERATION_KEY.format(member.id)) == b"1"
