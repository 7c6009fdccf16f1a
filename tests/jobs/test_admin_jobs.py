"""/admin/v1/jobs: staff and tenant admins list, read, cancel and preview jobs within their tenant scope, with
the scopes of each role (finance reads but neither cancels nor sees results; members have none of it)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.users.orm import Role, User
from tests.factories import bearer, create_tenant, create_user, fund, issue_key
from tests.jobs.admin_job_factory import failed_webhook_attempt, queued_job, succeeded_job
from tests.jobs.conftest import balance

HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def world(session: Session, job_settings: Settings) -> dict[str, User]:
    """Two tenants, each with an admin and a funded member; staff of every role."""
    people: dict[str, User] = {}
    for label in ("a", "b"):
        tenant = create_tenant(session)
        people[f"{label}_admin"] = create_user(session, tenant=tenant, role=Role.tenant_admin)
        member = create_user(session, tenant=tenant, role=Role.member)
        fund(session, account_id=member.account_id, amount=100)
        people[f"{label}_member"] = member
    for role in (Role.platform_admin, Role.operator, Role.finance):
        people[role.value] = create_user(session, role=role)
    return people


@pytest.fixture
def keys(session: Session, job_settings: Settings, world: dict[str, User]) -> dict[str, dict[str, str]]:
    return {name: bearer(issue_key(session, job_settings, user)) for name, user in world.items()}


def ids(response: object) -> list[str]:
    body = response.json()  # type: ignore[attr-defined]
    return [item["id"] for item in body["items"]]


def test_staff_list_every_tenants_jobs_newest_first_with_filters_and_pages(
    job_client: TestClient,
    job_app: FastAPI,
    session: Session,
    job_settings: Settings,
    world: dict[str, User],
    keys: dict[str, dict[str, str]],
) -> None:
    a, b = world["a_member"], world["b_member"]
    first = queued_job(session, job_settings, a)
    second = succeeded_job(session, job_settings, job_app.state.storage, b)
    third = queued_job(session, job_settings, b)
    staff = keys["operator"]

    everything = job_client.get("/admin/v1/jobs", headers=staff)
    assert everything.status_code == 200, everything.text
    assert ids(everything) == [third.public_id, second.public_id, first.public_id]
    item = everything.json()["items"][1]
    assert (item["tenant_id"], item["user_id"], item["user_email"]) == (b.tenant_id, b.id, b.email)
    assert item["tokens_captured"] == item["tokens_held"]
    assert item["result_url"] is None
    assert item["thumbnail_url"] == f"/admin/v1/jobs/{second.public_id}/thumbnail"

    def listed(**params: object) -> list[str]:
        response = job_client.get("/admin/v1/jobs", headers=staff, params=params)
        assert response.status_code == 200, response.text
        return ids(response)

    assert listed(status="queued") == [third.public_id, first.public_id]
    assert listed(status="succeeded") == [second.public_id]
    assert listed(tenant_id=a.tenant_id) == [first.public_id]
    assert listed(user_id=b.id, status="queued") == [third.public_id]
    session.execute(text("UPDATE jobs SET created_at = now() - interval '3 days' WHERE id = :id"), {"id": first.id})
    session.commit()
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    assert listed(created_before=two_days_ago) == [first.public_id]
    assert listed(created_after=two_days_ago) == [third.public_id, second.public_id]

    page_one = job_client.get("/admin/v1/jobs", headers=staff, params={"limit": 2})
    assert ids(page_one) == [third.public_id, second.public_id]
    cursor = page_one.json()["next_cursor"]
    page_two = job_client.get("/admin/v1/jobs", headers=staff, params={"limit": 2, "cursor": cursor})
    assert ids(page_two) == [first.public_id]
    assert page_two.json()["next_cursor"] is None


def test_a_tenant_admin_sees_only_its_own_tenants_jobs(
    job_client: TestClient,
    session: Session,
    job_settings: Settings,
    world: dict[str, User],
    keys: dict[str, dict[str, str]],
) -> None:
    own = queued_job(session, job_settings, world["a_member"])
    other = queued_job(session, job_settings, world["b_member"])
    admin = keys["a_admin"]

    assert ids(job_client.get("/admin/v1/jobs", headers=admin)) == [own.public_id]
    # Another tenant's user named as a filter: nothing, not the other tenant's jobs.
    assert ids(job_client.get("/admin/v1/jobs", headers=admin, params={"user_id": world["b_member"].id})) == []
    refused = job_client.get("/admin/v1/jobs", headers=admin, params={"tenant_id": world["b_member"].tenant_id})
    assert refused.status_code == 404
    for suffix in ("", "/webhooks", "/thumbnail"):
        assert job_client.get(f"/admin/v1/jobs/{other.public_id}{suffix}", headers=admin).status_code == 404
    canceled = job_client.post(f"/admin/v1/jobs/{other.public_id}/cancel", headers=admin)
    assert canceled.status_code == 404
    assert job_client.get(f"/admin/v1/jobs/{own.public_id}", headers=admin).status_code == 200


def test_the_detail_shows_the_hold_the_timings_and_the_webhook_attempts(
    job_client: TestClient,
    job_app: FastAPI,
    session: Session,
    job_settings: Settings,
    world: dict[str, User],
    keys: dict[str, dict[str, str]],
) -> None:
    queued = queued_job(session, job_settings, world["a_member"])
    done = succeeded_job(session, job_settings, job_app.state.storage, world["a_member"], webhook_url=HOOK)
    failed_webhook_attempt(session, job_settings, status=503)

    waiting = job_client.get(f"/admin/v1/jobs/{queued.public_id}", headers=keys["finance"]).json()
    assert waiting["hold"]["status"] == "held"
    assert waiting["hold"]["amount"] == waiting["tokens_held"] > 0
    assert waiting["hold"]["captured_amount"] is None
    assert waiting["hold"]["released_amount"] == 0
    assert waiting["durations_ms"] == {"queued": None, "running": None, "total": None}
    assert waiting["webhooks"] == []
    assert waiting["thumbnail_url"] is None

    detail = job_client.get(f"/admin/v1/jobs/{done.public_id}", headers=keys["a_admin"]).json()
    assert detail["status"] == "succeeded"
    assert detail["hold"]["status"] == "captured"
    assert detail["hold"]["captured_amount"] == detail["tokens_captured"] == detail["tokens_held"]
    assert detail["hold"]["released_amount"] == 0
    assert detail["timings_ms"] == {"detect": 12.5, "swap": 40.0}
    durations = detail["durations_ms"]
    assert durations["total"] is not None
    assert durations["total"] >= durations["running"] >= 0
    [event] = detail["webhooks"]
    assert event["event_type"] == "job.succeeded"
    assert event["status"] == "pending"
    assert [(d["attempt"], d["response_status"]) for d in event["deliveries"]] == [(1, 503)]
    webhooks = job_client.get(f"/admin/v1/jobs/{done.public_id}/webhooks", headers=keys["finance"])
    assert webhooks.json() == detail["webhooks"]


def test_cancel_releases_the_hold_as_the_owners_cancel_does_and_is_audited(
    job_client: TestClient,
    engine: Engine,
    session: Session,
    job_settings: Settings,
    world: dict[str, User],
    keys: dict[str, dict[str, str]],
) -> None:
    member = world["a_member"]
    job = queued_job(session, job_settings, member)
    assert balance(engine, member.account_id) == (100, job.tokens_held)

    for role in ("finance", "a_member"):
        refused = job_client.post(f"/admin/v1/jobs/{job.public_id}/cancel", headers=keys[role])
        assert (refused.status_code, refused.json()["code"]) == (403, "insufficient_scope")
    assert balance(engine, member.account_id) == (100, job.tokens_held)

    canceled = job_client.post(f"/admin/v1/jobs/{job.public_id}/cancel", headers=keys["a_admin"])
    assert canceled.status_code == 200, canceled.text
    body = canceled.json()
    assert body["status"] == "canceled"
    assert body["hold"]["status"] == "released"
    assert body["hold"]["released_amount"] == job.tokens_held
    assert balance(engine, member.account_id) == (100, 0)
    again = job_client.post(f"/admin/v1/jobs/{job.public_id}/cancel", headers=keys["operator"])
    assert (again.status_code, again.json()["code"]) == (409, "job_already_finished")

    audit = session.execute(
        text("SELECT actor_user_id, tenant_id, before, after FROM audit_events WHERE action = 'job.cancel'")
    ).one()
    assert (audit.actor_user_id, audit.tenant_id) == (world["a_admin"].id, member.tenant_id)
    assert (audit.before, audit.after) == ({"status": "queued"}, {"status": "canceled", "cancel_requested": False})


def test_a_running_job_is_asked_to_stop_and_keeps_its_hold_until_the_worker_settles(
    job_client: TestClient,
    engine: Engine,
    session: Session,
    job_settings: Settings,
    world: dict[str, User],
    keys: dict[str, dict[str, str]],
) -> None:
    from facemint.jobs import service as jobs

    member = world["b_member"]
    job = queued_job(session, job_settings, member)
    assert jobs.claim(session, public_id=job.public_id, worker_id="w") is not None
    session.commit()
    answer = job_client.post(f"/admin/v1/jobs/{job.public_id}/cancel", headers=keys["platform_admin"]).json()
    assert answer["status"] == "running"
    assert answer["cancel_requested_at"] is not None
    assert answer["hold"]["status"] == "held"
    assert balance(engine, member.account_id) == (100, job.tokens_held)
    # The worker (here: its transition) stops and releases.
    assert jobs.fail(session, job_id=job.id, attempt=1, code="canceled", detail="stopped") is not None
    session.commit()


def test_the_thumbnail_is_a_small_image_for_those_who_may_see_results(
    job_client: TestClient,
    job_app: FastAPI,
    session: Session,
    job_settings: Settings,
    world: dict[str, User],
    keys: dict[str, dict[str, str]],
) -> None:
    done = succeeded_job(session, job_settings, job_app.state.storage, world["a_member"])
    queued = queued_job(session, job_settings, world["a_member"])
    path = f"/admin/v1/jobs/{done.public_id}/thumbnail"

    for role in ("platform_admin", "operator", "a_admin"):
        response = job_client.get(path, headers=keys[role])
        assert response.status_code == 200, (role, response.text)
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["cache-control"] == "private, no-store"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == "JPEG"
            assert image.size == (256, 192)
    for role in ("finance", "a_member"):
        refused = job_client.get(path, headers=keys[role])
        assert (refused.status_code, refused.json()["code"]) == (403, "insufficient_scope")
    none_yet = job_client.get(f"/admin/v1/jobs/{queued.public_id}/thumbnail", headers=keys["operator"])
    assert (none_yet.status_code, none_yet.json()["code"]) == (410, "result_gone")


def test_members_have_no_admin_job_routes(
    job_client: TestClient,
    session: Session,
    job_settings: Settings,
    world: dict[str, User],
    keys: dict[str, dict[str, str]],
) -> None:
    own = queued_job(session, job_settings, world["a_member"])
    for path in ("/admin/v1/jobs", f"/admin/v1/jobs/{own.public_id}", f"/admin/v1/jobs/{own.public_id}/webhooks"):
        response = job_client.get(path, headers=keys["a_member"])
        assert (response.status_code, response.json()["code"]) == (403, "insufficient_scope")
