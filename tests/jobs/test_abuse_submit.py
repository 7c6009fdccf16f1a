"""Abuse rules on the submit path, through the API with a real worker: a `flag` lets the job through and is recorded
once (review row, audit event, `abuse.triggered` account event); a `freeze` refuses the submit (403
`account_frozen`, nothing held), freezes the user and releases its queued jobs, which no worker then runs; a review
with an unfreeze lets the user submit again. The rules' own bounds: tests/platform/test_abuse_counters.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import select, text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint.abuse.orm import AbuseTrigger, RuleAction, RuleKind
from facemint.audit.orm import AuditEvent
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from facemint.webhooks.orm import WebhookEvent
from tests.factories import add_abuse_rule, bearer, create_user, issue_key
from tests.jobs.conftest import Payer, balance, counts, job_row, problem, submit

EVENTS_URL = "https://93.184.216.34/facemint-events"


def jobs_rule(session: Session, redis: Redis, payer: Payer, action: RuleAction, max_jobs: int = 2) -> Any:
    return add_abuse_rule(
        session,
        redis,
        tenant_id=payer.tenant_id,
        kind=RuleKind.jobs_per_window,
        action=action,
        max_jobs=max_jobs,
        window_seconds=3600,
    )


def accepted(client: TestClient, payer: Payer, **kwargs: Any) -> str:
    response = submit(client, payer, **kwargs)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def triggers(session: Session, user_id: int) -> list[AbuseTrigger]:
    session.expire_all()
    return list(session.scalars(select(AbuseTrigger).where(AbuseTrigger.user_id == user_id).order_by(AbuseTrigger.id)))


def user_status(session: Session, user_id: int) -> str:
    session.expire_all()
    user = session.get(User, user_id)
    assert user is not None
    return user.status


class TestFlag:
    def test_a_flag_lets_every_job_through_and_is_recorded_once(
        self,
        job_client: TestClient,
        session: Session,
        redis_client: Redis,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
    ) -> None:
        payer = make_payer(10)
        tenant = session.get(Tenant, payer.tenant_id)
        assert tenant is not None
        tenant.events_webhook_url = EVENTS_URL
        session.commit()
        rule = jobs_rule(session, redis_client, payer, RuleAction.flag)
        ids = [accepted(job_client, payer) for _ in range(5)]
        (trigger,) = triggers(session, payer.user_id)
        assert (trigger.rule_id, trigger.action, trigger.status, trigger.job_public_id) == (
            rule.id,
            "flag",
            "open",
            ids[2],  # the third job is the first past two
        )
        assert trigger.observed == {"count": 3, "limit": 2}
        assert user_status(session, payer.user_id) == "active"
        assert balance(engine, payer.account_id) == (10, 5)
        audited = session.scalars(select(AuditEvent).where(AuditEvent.action == "abuse.trigger")).all()
        assert [(e.actor_user_id, e.target_id, e.after["id"]) for e in audited] == [  # type: ignore[index]
            (None, str(payer.user_id), trigger.id)
        ]
        (event,) = session.scalars(select(WebhookEvent).where(WebhookEvent.event_type == "abuse.triggered")).all()
        assert (event.url, event.job_id, event.payload["data"]["id"], event.payload["data"]["user_id"]) == (
            EVENTS_URL,
            None,
            trigger.id,
            payer.user_id,
        )

    def test_replays_are_not_counted(
        self, job_client: TestClient, session: Session, redis_client: Redis, make_payer: Callable[..., Payer]
    ) -> None:
        payer = make_payer(10)
        jobs_rule(session, redis_client, payer, RuleAction.freeze, max_jobs=1)
        first = accepted(job_client, payer, key="same-key")
        for _ in range(3):
            replay = submit(job_client, payer, key="same-key")
            assert (replay.status_code, replay.json()["id"]) == (200, first)
        assert triggers(session, payer.user_id) == []
        assert user_status(session, payer.user_id) == "active"


class TestFreeze:
    def test_a_freeze_refuses_the_submit_and_releases_the_queued_jobs_which_never_run(
        self,
        job_client: TestClient,
        session: Session,
        redis_client: Redis,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        drain: Callable[..., None],
    ) -> None:
        payer = make_payer(10)
        rule = jobs_rule(session, redis_client, payer, RuleAction.freeze)
        queued = [accepted(job_client, payer) for _ in range(2)]
        assert balance(engine, payer.account_id) == (10, 2)

        refused = problem(submit(job_client, payer), 403, "account_frozen")
        assert "abuse rule" in refused["detail"]
        assert "2" not in refused["detail"]  # nor which limit: it would say how to stay under it
        # Nothing of the refused submit was kept; the two queued jobs were released, uncharged.
        assert counts(engine, payer.user_id) == (2, 2)
        assert balance(engine, payer.account_id) == (10, 0)
        for job_id in queued:
            row = job_row(engine, job_id)
            assert (row.status, row.error_code, row.tokens_captured) == ("canceled", "account_frozen", None)
        assert user_status(session, payer.user_id) == "frozen"
        (trigger,) = triggers(session, payer.user_id)
        assert (trigger.rule_id, trigger.action, trigger.observed) == (rule.id, "freeze", {"count": 3, "limit": 2})
        freeze = session.scalars(select(AuditEvent).where(AuditEvent.action == "user.freeze")).one()
        assert (freeze.actor_user_id, freeze.after) == (None, {"status": "frozen", "abuse_rules": [rule.id]})
        # The user's credentials stop at authentication from now on.
        problem(submit(job_client, payer), 403, "user_frozen")

        drain()  # the queue entries of the released jobs: a worker takes them and runs nothing
        for job_id in queued:
            row = job_row(engine, job_id)
            assert (row.status, row.attempts, row.started_at) == ("canceled", 0, None)
        assert balance(engine, payer.account_id) == (10, 0)

    def test_after_a_review_that_unfreezes_the_user_submits_again(
        self,
        job_client: TestClient,
        session: Session,
        redis_client: Redis,
        make_payer: Callable[..., Payer],
        job_settings: Settings,
    ) -> None:
        payer = make_payer(10)
        jobs_rule(session, redis_client, payer, RuleAction.freeze)
        for _ in range(2):
            accepted(job_client, payer)
        problem(submit(job_client, payer), 403, "account_frozen")
        admin = create_user(session, tenant=session.get(Tenant, payer.tenant_id), role=Role.tenant_admin, password=None)
        admin_headers = bearer(issue_key(session, job_settings, admin))
        (trigger,) = triggers(session, payer.user_id)
        resolved = job_client.post(
            f"/admin/v1/abuse/triggers/{trigger.id}/resolve",
            json={"note": "checked with the customer", "unfreeze": True},
            headers=admin_headers,
        )
        assert resolved.status_code == 200, resolved.text
        # The same window, counted afresh: two more jobs go through, the third freezes again, as a new trigger.
        for _ in range(2):
            accepted(job_client, payer)
        problem(submit(job_client, payer), 403, "account_frozen")
        assert [(t.status, t.generation) for t in triggers(session, payer.user_id)] == [("resolved", 0), ("open", 1)]

    def test_a_job_committed_after_its_user_was_frozen_is_released_by_the_worker_not_run(
        self,
        job_client: TestClient,
        session: Session,
        make_payer: Callable[..., Payer],
        engine: DbEngine,
        drain: Callable[..., None],
    ) -> None:
        """A submit authenticated just before a freeze commits its job after the release: the claim refuses a
        frozen user's job and the worker releases it. (A person's freeze gets the same: its jobs never run.)"""
        payer = make_payer(10)
        job_id = accepted(job_client, payer)
        with engine.begin() as conn:
            conn.execute(text("UPDATE users SET status = 'frozen' WHERE id = :id"), {"id": payer.user_id})
        drain()
        row = job_row(engine, job_id)
        assert (row.status, row.error_code, row.attempts, row.tokens_captured) == (
            "canceled",
            "account_frozen",
            0,
            None,
        )
        assert balance(engine, payer.account_id) == (10, 0)
