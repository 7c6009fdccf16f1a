"""/admin/v1/jobs: staff and tenant admins list, read, cancel and preview jobs within their tenant scope, with
the scopes of each role (finance reads but neither cancels nor sees results; members have none of it)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.jobs import service as jobs
from facemint.users.orm import Role, User
from tests.factories import bearer, create_tenant, create_user, fund, issue_key
from tests.jobs.admin_job_factory import failed_webhook_attempt, queued_job, succeeded_job
from tests.jobs.conftest import balance

HOOK = "http://127.0.0.1:9/hook"


@dataclass
class World:
    """Two tenants (`a`, `b`), each with an admin and a funded member; staff of every role; each person's key."""

    client: TestClient
    session: Session
    settings: Settings
    app: FastAPI
    people: dict[str, User]
    keys: dict[str, dict[str, str]]

    def queued(self, owner: str, **kwargs: Any) -> Any:
        return queued_job(self.session, self.settings, self.people[owner], **kwargs)

    def succeeded(self, owner: str, **kwargs: Any) -> Any:
        return succeeded_job(self.session, self.settings, self.app.state.storage, self.people[owner], **kwargs)

    def get(self, path: str, *, as_: str, **params: Any) -> httpx.Response:
        return self.client.get(path, headers=self.keys[as_], params=params)

    def post(self, path: str, *, as_: str) -> httpx.Response:
        return self.client.post(path, headers=self.keys[as_])


@pytest.fixture
def world(job_client: TestClient, job_app: FastAPI, session: Session, job_settings: Settings) -> World:
    people: dict[str, User] = {}
    for label in ("a", "b"):
        tenant = create_tenant(session)
        people[f"{label}_admin"] = create_user(session, tenant=tenant, role=Role.tenant_admin)
        member = create_user(session, tenant=tenant, role=Role.member)
        fund(session, account_id=member.account_id, amount=100)
        people[f"{label}_member"] = member
    for role in (Role.platform_admin, Role.operator, Role.finance):
        people[role.value] = create_user(session, role=role)
    keys = {name: bearer(issue_key(session, job_settings, user)) for name, user in people.items()}
    return World(job_client, session, job_settings, job_app, people, keys)


def ids(response: httpx.Response) -> list[str]:
    return [item["id"] for item in response.json()["items"]]


def problem(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def test_staff_list_every_tenants_jobs_newest_first_with_filters_and_pages(world: World) -> None:
    a, b = world.people["a_member"], world.people["b_member"]
    first = world.queued("a_member")
    second = world.succeeded("b_member")
    third = world.queued("b_member")

    everything = world.get("/admin/v1/jobs", as_="operator")
    assert everything.status_code == 200, everything.text
    assert ids(everything) == [third.public_id, second.public_id, first.public_id]
    item = everything.json()["items"][1]
    assert (item["tenant_id"], item["user_id"], item["user_email"]) == (b.tenant_id, b.id, b.email)
    assert item["tokens_captured"] == item["tokens_held"]
    assert item["result_url"] is None
    assert item["thumbnail_url"] == f"/admin/v1/jobs/{second.public_id}/thumbnail"

    def listed(**params: object) -> list[str]:
        response = world.get("/admin/v1/jobs", as_="operator", **params)
        assert response.status_code == 200, response.text
        return ids(response)

    assert listed(status="queued") == [third.public_id, first.public_id]
    assert listed(status="succeeded") == [second.public_id]
    assert listed(tenant_id=a.tenant_id) == [first.public_id]
    assert listed(user_id=b.id, status="queued") == [third.public_id]
    world.session.execute(
        text("UPDATE jobs SET created_at = now() - interval '3 days' WHERE id = :id"), {"id": first.id}
    )
    world.session.commit()
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    assert listed(created_before=two_days_ago) == [first.public_id]
    assert listed(created_after=two_days_ago) == [third.public_id, second.public_id]

    page_one = world.get("/admin/v1/jobs", as_="operator", limit=2)
    assert ids(page_one) == [third.public_id, second.public_id]
    cursor = page_one.json()["next_cursor"]
    page_two = world.get("/admin/v1/jobs", as_="operator", limit=2, cursor=cursor)
    assert ids(page_two) == [first.public_id]
    assert page_two.json()["next_cursor"] is None


def test_a_tenant_admin_sees_only_its_own_tenants_jobs(world: World) -> None:
    own = world.queued("a_member")
    other = world.queued("b_member")

    assert ids(world.get("/admin/v1/jobs", as_="a_admin")) == [own.public_id]
    # Another tenant's user named as a filter: nothing, not the other tenant's jobs.
    assert ids(world.get("/admin/v1/jobs", as_="a_admin", user_id=world.people["b_member"].id)) == []
    refused = world.get("/admin/v1/jobs", as_="a_admin", tenant_id=world.people["b_member"].tenant_id)
    assert refused.status_code == 404
    for suffix in ("", "/webhooks", "/thumbnail"):
        assert world.get(f"/admin/v1/jobs/{other.public_id}{suffix}", as_="a_admin").status_code == 404
    canceled = world.post(f"/admin/v1/jobs/{other.public_id}/cancel", as_="a_admin")
    assert canceled.status_code == 404
    assert world.get(f"/admin/v1/jobs/{own.public_id}", as_="a_admin").status_code == 200


def test_the_detail_shows_the_hold_the_timings_and_the_webhook_attempts(world: World) -> None:
    queued = world.queued("a_member")
    done = world.succeeded("a_member", webhook_url=HOOK)
    failed_webhook_attempt(world.session, world.settings, status=503)

    waiting = world.get(f"/admin/v1/jobs/{queued.public_id}", as_="finance").json()
    assert waiting["hold"]["status"] == "held"
    assert waiting["hold"]["amount"] == waiting["tokens_held"] > 0
    assert waiting["hold"]["captured_amount"] is None
    assert waiting["hold"]["released_amount"] == 0
    assert waiting["durations_ms"] == {"queued": None, "running": None, "total": None}
    assert waiting["webhooks"] == []
    assert waiting["thumbnail_url"] is None

    detail = world.get(f"/admin/v1/jobs/{done.public_id}", as_="a_admin").json()
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
    webhooks = world.get(f"/admin/v1/jobs/{done.public_id}/webhooks", as_="finance")
    assert webhooks.json() == detail["webhooks"]


def test_cancel_releases_the_hold_as_the_owners_cancel_does_and_is_audited(world: World, engine: Engine) -> None:
    member = world.people["a_member"]
    job = world.queued("a_member")
    cancel = f"/admin/v1/jobs/{job.public_id}/cancel"
    assert balance(engine, member.account_id) == (100, job.tokens_held)

    for role in ("finance", "a_member"):
        assert problem(world.post(cancel, as_=role)) == (403, "insufficient_scope")
    assert balance(engine, member.account_id) == (100, job.tokens_held)

    canceled = world.post(cancel, as_="a_admin")
    assert canceled.status_code == 200, canceled.text
    body = canceled.json()
    assert body["status"] == "canceled"
    assert body["hold"]["status"] == "released"
    assert body["hold"]["released_amount"] == job.tokens_held
    assert balance(engine, member.account_id) == (100, 0)
    assert problem(world.post(cancel, as_="operator")) == (409, "job_already_finished")

    audit = world.session.execute(
        text("SELECT actor_user_id, tenant_id, before, after FROM audit_events WHERE action = 'job.cancel'")
    ).one()
    assert (audit.actor_user_id, audit.tenant_id) == (world.people["a_admin"].id, member.tenant_id)
    assert (audit.before, audit.after) == ({"status": "queued"}, {"status": "canceled", "cancel_requested": False})


def test_a_running_job_is_asked_to_stop_and_keeps_its_hold_until_the_worker_settles(
    world: World, engine: Engine
) -> None:
    member = world.people["b_member"]
    job = world.queued("b_member")
    assert jobs.claim(world.session, public_id=job.public_id, worker_id="w") is not None
    world.session.commit()
    answer = world.post(f"/admin/v1/jobs/{job.public_id}/cancel", as_="platform_admin").json()
    assert answer["status"] == "running"
    assert answer["cancel_requested_at"] is not None
    assert answer["hold"]["status"] == "held"
    assert balance(engine, member.account_id) == (100, job.tokens_held)
    # The worker (here: its transition) stops and releases.
    assert jobs.fail(world.session, job_id=job.id, attempt=1, code="canceled", detail="stopped") is not None
    world.session.commit()


def test_the_thumbnail_is_a_small_image_for_those_who_may_see_results(world: World) -> None:
    done = world.succeeded("a_member")
    queued = world.queued("a_member")
    path = f"/admin/v1/jobs/{done.public_id}/thumbnail"

    for role in ("platform_admin", "operator", "a_admin"):
        response = world.get(path, as_=role)
        assert response.status_code == 200, (role, response.text)
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["cache-control"] == "private, no-store"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == "JPEG"
            assert image.size == (256, 192)
    for role in ("finance", "a_member"):
        assert problem(world.get(path, as_=role)) == (403, "insufficient_scope")
    none_yet = world.get(f"/admin/v1/jobs/{queued.public_id}/thumbnail", as_="operator")
    assert problem(none_yet) == (410, "result_gone")


def test_members_have_no_admin_job_routes(world: World) -> None:
    own = world.queued("a_member")
    for path in ("/admin/v1/jobs", f"/admin/v1/jobs/{own.public_id}", f"/admin/v1/jobs/{own.public_id}/webhooks"):
        assert problem(world.get(path, as_="a_member")) == (403, "insufficient_scope")
