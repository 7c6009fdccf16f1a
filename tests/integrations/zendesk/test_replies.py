"""The reply: after the swap has run on a real worker (demo models) and settled, the worker uploads the avatar to
the fake Zendesk and posts it as the ticket's public reply, once, retrying through 500s and 429s; the results cache
serves a second ticket of the same content without a job or a charge."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine

from facemint.config import Settings
from facemint.db import make_sessionmaker, unit_of_work
from facemint.integrations.zendesk.replies import ReplySender, advance_settled, claim_due
from facemint.storage import make_storage
from tests.integrations.zendesk.conftest import (
    KEY,
    KEY_ID,
    MakeSetup,
    audit_actions,
    count,
    send,
    ticket_row,
)
from tests.integrations.zendesk.fake_server import FakeZendesk
from tests.jobs.conftest import ROOT, balance, blank_png, job_row, wait_for, worker_env

Round = Callable[[], int]


def replied(engine: DbEngine, reply_round: Round, zendesk_ticket_id: int, *, timeout: float = 30.0) -> Any:
    """Run reply rounds until the ticket is replied (or failed); returns its row."""

    def done() -> Any:
        reply_round()
        row = ticket_row(engine, zendesk_ticket_id)
        return row if row.status in ("replied", "failed") else None

    return wait_for(done, timeout=timeout, interval=0.1)


def posted(fake: FakeZendesk, ticket_id: int) -> dict[str, Any]:
    """The one reply on the ticket, checked against the upload it carries."""
    [comment] = fake.replies(ticket_id)
    [token] = comment["uploads"]
    assert comment["public"] is True
    upload = fake.uploads[token]
    assert upload["data"].startswith(b"\x89PNG")
    assert upload["content_type"] == "image/png"
    assert comment["attachments"] == [{"id": upload["id"]}]
    return {"comment": comment, "upload": upload}


def test_a_new_ticket_gets_its_avatar_as_the_first_reply(
    client: TestClient,
    make_setup: MakeSetup,
    fake_zendesk: FakeZendesk,
    engine: DbEngine,
    zendesk_settings: Settings,
) -> None:
    """End to end: the webhook, a real `facemint worker` process running the swap with the demo models, the
    capture, and the worker's reply to the fake Zendesk."""
    setup = make_setup(rules=[{"tags": ["vip"], "scene": "other_scene"}])
    answer = send(client, setup, fake_zendesk, 5001, subject="Hi", tags=["vip"])
    assert answer.status_code == 202, answer.text
    job_public_id = answer.json()["detail"].removeprefix("job ")
    env = worker_env(
        zendesk_settings,
        FACEMINT_INTEGRATION_SECRET_KEYS=f'{{"{KEY_ID}": "{KEY}"}}',
        FACEMINT_INTEGRATION_SECRET_KEY_ID=KEY_ID,
        FACEMINT_ZENDESK_ALLOWED_BASE_URLS=f'["{fake_zendesk.base_url}"]',
        FACEMINT_ZENDESK_POLL_SECONDS="0.2",
    )
    worker = subprocess.Popen([sys.executable, "-m", "facemint.cli.main", "worker"], env=env, cwd=ROOT)
    try:
        wait_for(lambda: fake_zendesk.replies(5001), timeout=60)
        row = wait_for(lambda: (r := ticket_row(engine, 5001)).status == "replied" and r, timeout=10)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    reply = posted(fake_zendesk, 5001)
    assert reply["comment"]["body"] == "Here is your personalised avatar."
    assert reply["upload"]["filename"] == "avatar-5001.png"
    # Basic auth as Zendesk takes it: {email}/token and the API token.
    expected = base64.b64encode(f"{fake_zendesk.email}/token:{fake_zendesk.api_token}".encode()).decode()
    assert {r.headers["authorization"] for r in fake_zendesk.received} == {f"Basic {expected}"}
    job = job_row(engine, job_public_id)
    assert (job.status, job.tokens_captured) == ("succeeded", 1)
    assert balance(engine, setup.payer_account_id) == (9, 0)
    assert (row.upload_token, row.attachment_id) == (reply["comment"]["uploads"][0], reply["upload"]["id"])
    # The stored result is the image Zendesk received.
    with engine.connect() as conn:
        key = conn.execute(text("SELECT storage_key FROM zendesk_results WHERE id = :id"), {"id": row.result_id})
        stored = (zendesk_settings.resolved_storage_dir / key.scalar_one()).read_bytes()
    assert stored == reply["upload"]["data"]
    assert audit_actions(engine, setup.tenant.id)[-4:] == [
        "zendesk.ticket.accepted",
        "zendesk.swap.settled",
        "zendesk.reply.uploaded",
        "zendesk.reply.posted",
    ]


def test_replies_retry_after_500s_and_honour_429_retry_after(
    client: TestClient,
    make_setup: MakeSetup,
    fake_zendesk: FakeZendesk,
    engine: DbEngine,
    drain: Callable[[], None],
    reply_round: Round,
) -> None:
    setup = make_setup()
    assert send(client, setup, fake_zendesk, 6001).status_code == 202
    drain()
    fake_zendesk.fail("POST", "uploads", 500, times=2)
    fake_zendesk.fail("PUT", "ticket", 429, retry_after="2")
    row = replied(engine, reply_round, 6001)
    assert row.status == "replied", row.last_error
    uploads, puts = fake_zendesk.requests("POST", "uploads"), fake_zendesk.requests("PUT", "ticket")
    assert [r.status for r in uploads] == [500, 500, 201]
    assert [r.status for r in puts] == [429, 200]
    # The 429's Retry-After is waited for (the backoff alone would be 0.2 s).
    assert puts[1].at - puts[0].at >= 2.0
    reply = posted(fake_zendesk, 6001)
    assert reply["comment"]["uploads"] == [row.upload_token]
    assert row.attempts == 4
    actions = audit_actions(engine, setup.tenant.id)
    assert actions.count("zendesk.reply.retry") == 3
    assert actions[-1] == "zendesk.reply.posted"


def test_a_reply_whose_answer_was_lost_is_not_posted_twice(
    client: TestClient,
    make_setup: MakeSetup,
    fake_zendesk: FakeZendesk,
    engine: DbEngine,
    drain: Callable[[], None],
    reply_round: Round,
) -> None:
    """Zendesk added the comment but its answer never arrived (here: a 500 after applying it). The next attempt
    finds its attachment among the ticket's comments instead of posting again."""
    setup = make_setup()
    assert send(client, setup, fake_zendesk, 6101).status_code == 202
    drain()
    fake_zendesk.lose_replies(1)
    row = replied(engine, reply_round, 6101)
    assert row.status == "replied"
    posted(fake_zendesk, 6101)  # exactly one comment
    assert len(fake_zendesk.requests("PUT", "ticket")) == 1
    assert len(fake_zendesk.requests("POST", "uploads")) == 1
    assert len(fake_zendesk.requests("GET", "comments")) == 1
    with engine.connect() as conn:
        confirmed = conn.execute(
            text("SELECT after ->> 'confirmed_by' FROM audit_events WHERE action = 'zendesk.reply.posted'")
        ).scalar_one()
    assert confirmed == "comments"
    assert audit_actions(engine, setup.tenant.id).count("zendesk.reply.posted") == 1


def test_a_second_ticket_of_the_same_content_is_served_from_the_cache_without_a_job_or_a_charge(
    client: TestClient,
    make_setup: MakeSetup,
    fake_zendesk: FakeZendesk,
    engine: DbEngine,
    drain: Callable[[], None],
    reply_round: Round,
) -> None:
    setup = make_setup()
    assert send(client, setup, fake_zendesk, 7001).status_code == 202
    # A second ticket while the first one's job is still queued waits for that job: still one swap.
    waiting = send(client, setup, fake_zendesk, 7002)
    assert waiting.json() == {"status": "accepted", "ticket_id": 7002, "detail": "served from the cache"}
    assert count(engine, "SELECT count(*) FROM jobs") == 1
    drain()
    assert replied(engine, reply_round, 7001).status == "replied"
    assert replied(engine, reply_round, 7002).status == "replied"
    assert balance(engine, setup.payer_account_id) == (9, 0)
    # Later, a third ticket of the same content: no job, no hold, no charge; its reply is still posted.
    third = send(client, setup, fake_zendesk, 7003)
    assert third.status_code == 202
    assert third.json()["detail"] == "served from the cache"
    assert ticket_row(engine, 7003).status == "replying"
    assert replied(engine, reply_round, 7003).status == "replied"
    assert count(engine, "SELECT count(*) FROM jobs") == 1
    assert count(engine, "SELECT count(*) FROM holds") == 1
    assert balance(engine, setup.payer_account_id) == (9, 0)
    images = {posted(fake_zendesk, ticket)["upload"]["data"] for ticket in (7001, 7002, 7003)}
    assert len(images) == 1
    listed = client.get(f"{setup.base}/tickets", headers=setup.admin).json()["items"]
    assert [(t["zendesk_ticket_id"], t["cached"], t["job_id"] is None) for t in listed] == [
        (7003, True, True),
        (7002, True, True),
        (7001, False, False),
    ]
    # Another scene is other content: a new job.
    setup_rules = {"rules": [], "default": {"template_id": setup.template_id, "scene_id": setup.other_scene_id}}
    assert client.put(f"{setup.base}/rules", json=setup_rules, headers=setup.admin).status_code == 200
    assert send(client, setup, fake_zendesk, 7004).json()["detail"].startswith("job ")
    assert count(engine, "SELECT count(*) FROM jobs") == 2


def test_a_final_answer_fails_the_reply_at_once(
    client: TestClient,
    make_setup: MakeSetup,
    fake_zendesk: FakeZendesk,
    engine: DbEngine,
    drain: Callable[[], None],
    reply_round: Round,
) -> None:
    setup = make_setup()
    assert send(client, setup, fake_zendesk, 8001).status_code == 202
    drain()
    fake_zendesk.fail("PUT", "ticket", 404)  # the ticket was deleted meanwhile
    row = replied(engine, reply_round, 8001)
    assert (row.status, row.reason, row.last_error, row.attempts) == ("failed", "reply_failed", "HTTP 404", 1)
    assert fake_zendesk.replies(8001) == []
    assert audit_actions(engine, setup.tenant.id)[-1] == "zendesk.reply.failed"
    # The swap itself succeeded and was charged.
    assert balance(engine, setup.payer_account_id) == (9, 0)


def test_a_swap_that_fails_is_released_and_gets_no_reply(
    client: TestClient,
    make_setup: MakeSetup,
    fake_zendesk: FakeZendesk,
    engine: DbEngine,
    drain: Callable[[], None],
    reply_round: Round,
) -> None:
    """A scene without a face fails its job (an input error, never retried): the hold is released, the ticket
    fails, the cache forgets the content, and Zendesk hears nothing."""
    setup = make_setup()
    faceless = client.post(
        f"{setup.base}/assets",
        params={"kind": "scene", "name": "empty"},
        content=blank_png(),
        headers={**setup.admin, "Content-Type": "image/png"},
    ).json()["id"]
    rules = {"rules": [], "default": {"template_id": setup.template_id, "scene_id": faceless}}
    assert client.put(f"{setup.base}/rules", json=rules, headers=setup.admin).status_code == 200
    assert send(client, setup, fake_zendesk, 9001).status_code == 202
    drain()
    row = replied(engine, reply_round, 9001)
    assert (row.status, row.reason, row.last_error) == ("failed", "swap_failed", "no_target_face")
    assert balance(engine, setup.payer_account_id) == (10, 0)
    assert fake_zendesk.received == []
    assert count(engine, "SELECT count(*) FROM zendesk_results WHERE status = 'failed'") == 1
    assert "zendesk.ticket.failed" in audit_actions(engine, setup.tenant.id)
    # The next ticket of that content tries again (a new job), rather than sharing the failure.
    assert send(client, setup, fake_zendesk, 9002).json()["detail"].startswith("job ")


def test_a_reply_taken_over_after_its_lease_ended_records_nothing(
    client: TestClient,
    make_setup: MakeSetup,
    fake_zendesk: FakeZendesk,
    engine: DbEngine,
    drain: Callable[[], None],
    zendesk_settings: Settings,
) -> None:
    """Recording is fenced by the lease: a sender whose claim was taken over changes nothing."""
    setup = make_setup()
    assert send(client, setup, fake_zendesk, 9101).status_code == 202
    drain()
    sessions = make_sessionmaker(engine)
    sender = ReplySender(sessions, settings=zendesk_settings, storage=make_storage(zendesk_settings))
    with unit_of_work(sessions) as session:
        advance_settled(session)
    with unit_of_work(sessions) as session:
        [first] = claim_due(session, limit=5, lease_seconds=0.1)
    time.sleep(0.3)
    with unit_of_work(sessions) as session:
        [second] = claim_due(session, limit=5, lease_seconds=60)
    sender.attempt(first)  # its upload is not recorded, and it stops there
    assert ticket_row(engine, 9101).upload_token is None
    assert fake_zendesk.replies(9101) == []
    sender.attempt(second)
    assert ticket_row(engine, 9101).status == "replied"
    posted(fake_zendesk, 9101)
