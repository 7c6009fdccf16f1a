"""The webhook: Zendesk's signature or nothing runs; a ticket event is handled once; the rules pick the avatar or
the ticket is skipped (audited, nothing charged)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.integrations.zendesk import signature
from facemint.users.orm import Role
from tests.factories import bearer, create_tenant, create_user, issue_key
from tests.integrations.zendesk.conftest import (
    MakeSetup,
    Setup,
    audit_actions,
    connector_body,
    count,
    send,
    ticket_row,
)
from tests.integrations.zendesk.fake_server import FakeZendesk
from tests.jobs.conftest import balance, problem


def _nothing_ran(engine: DbEngine, setup: Setup) -> None:
    assert count(engine, "SELECT count(*) FROM zendesk_tickets") == 0
    assert count(engine, "SELECT count(*) FROM jobs") == 0
    assert balance(engine, setup.payer_account_id) == (10, 0)
    assert audit_actions(engine, setup.tenant.id)[-1] == "zendesk.rules.replace"  # nothing since the setup


class TestSignature:
    def test_a_webhook_without_a_signature_is_401_and_nothing_runs(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        body, _ = fake_zendesk.webhook(1)
        answer = client.post(setup.webhook_path, content=body, headers={"Content-Type": "application/json"})
        assert "not signed" in problem(answer, 401, "invalid_webhook_signature")["detail"]
        _nothing_ran(engine, setup)

    def test_a_signature_with_another_secret_is_401(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        body, headers = fake_zendesk.webhook(1, secret="not-the-connector-secret")
        problem(client.post(setup.webhook_path, content=body, headers=headers), 401, "invalid_webhook_signature")
        _nothing_ran(engine, setup)

    def test_a_tampered_body_is_401(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        body, headers = fake_zendesk.webhook(1, subject="Hello")
        tampered = body.replace(b"Hello", b"Howdy")
        problem(client.post(setup.webhook_path, content=tampered, headers=headers), 401, "invalid_webhook_signature")
        _nothing_ran(engine, setup)

    @pytest.mark.parametrize("offset", [-301, 301], ids=["stale", "future"])
    def test_a_timestamp_outside_the_window_is_401(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine, offset: int
    ) -> None:
        setup = make_setup()
        body, headers = fake_zendesk.webhook(1, timestamp=signature.timestamp_now(time.time() + offset))
        answer = problem(client.post(setup.webhook_path, content=body, headers=headers), 401)
        assert "300 s" in answer["detail"]
        # The same webhook, freshly signed, is taken: only the time was wrong.
        assert client.post(setup.webhook_path, content=body, headers=fake_zendesk.sign(body)).status_code == 202
        assert count(engine, "SELECT count(*) FROM zendesk_tickets") == 1

    def test_an_unknown_connector_answers_as_a_wrong_signature_does(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk
    ) -> None:
        setup = make_setup()
        body, headers = fake_zendesk.webhook(1, secret="wrong")
        wrong = client.post(setup.webhook_path, content=body, headers=headers).json()
        body, headers = fake_zendesk.webhook(1)
        unknown = client.post("/integrations/zendesk/zdc_" + "0" * 24 + "/webhook", content=body, headers=headers)
        malformed = client.post("/integrations/zendesk/1/webhook", content=body, headers=headers)
        for answer in (unknown, malformed):
            assert problem(answer, 401)["detail"] == wrong["detail"]

    def test_a_connector_refuses_every_webhook_until_its_signing_secret_is_set(
        self,
        client: TestClient,
        session: Session,
        zendesk_settings: Settings,
        fake_zendesk: FakeZendesk,
        engine: DbEngine,
    ) -> None:
        """The order Zendesk imposes: the connector (its webhook URL), then the webhook (its secret)."""
        tenant = create_tenant(session)
        headers = bearer(
            issue_key(session, zendesk_settings, create_user(session, tenant=tenant, role=Role.tenant_admin))
        )
        base = f"/admin/v1/tenants/{tenant.id}/integrations/zendesk"
        body = connector_body(fake_zendesk, create_user(session, tenant=tenant).id)
        del body["signing_secret"]
        made = client.put(base, json=body, headers=headers).json()
        assert made["signing_secret_fingerprint"] is None
        path = f"/integrations/zendesk/{made['connector_id']}/webhook"
        ticket, signed = fake_zendesk.webhook(1)
        assert "no signing secret" in problem(client.post(path, content=ticket, headers=signed), 401)["detail"]
        assert client.put(base, json={**body, "signing_secret": fake_zendesk.signing_secret}, headers=headers).json()[
            "signing_secret_fingerprint"
        ]
        assert client.post(path, content=ticket, headers=signed).status_code == 200  # skipped: no rules yet
        assert count(engine, "SELECT count(*) FROM zendesk_tickets") == 1

    def test_api_keys_do_not_open_the_webhook(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        body, _ = fake_zendesk.webhook(1)
        answer = client.post(setup.webhook_path, content=body, headers={**setup.admin, "Content-Type": "text/json"})
        problem(answer, 401, "invalid_webhook_signature")
        _nothing_ran(engine, setup)

    def test_a_body_over_the_cap_is_refused_before_it_is_read(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, zendesk_settings: Any
    ) -> None:
        setup = make_setup()
        padding = "x" * zendesk_settings.zendesk_webhook_max_bytes
        body, headers = fake_zendesk.webhook(1, subject=padding)
        answer = problem(client.post(setup.webhook_path, content=body, headers=headers), 413, "payload_too_large")
        assert answer["max_bytes"] == zendesk_settings.zendesk_webhook_max_bytes


class TestOnce:
    def test_a_replayed_webhook_is_answered_200_and_does_nothing_more(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        body, headers = fake_zendesk.webhook(42)
        first = client.post(setup.webhook_path, content=body, headers=headers)
        assert first.status_code == 202, first.text
        assert balance(engine, setup.payer_account_id) == (10, 1)
        for again in (headers, fake_zendesk.sign(body)):  # the same signature, and a fresh one (Zendesk's retry)
            replay = client.post(setup.webhook_path, content=body, headers=again)
            assert replay.status_code == 200, replay.text
            assert replay.json() == {"status": "duplicate", "ticket_id": 42, "detail": "this ticket event was received"}
        assert count(engine, "SELECT count(*) FROM zendesk_tickets") == 1
        assert count(engine, "SELECT count(*) FROM jobs") == 1
        assert balance(engine, setup.payer_account_id) == (10, 1)

    def test_events_other_than_a_new_ticket_are_ignored(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        body = json.dumps({"type": "zen:event-type:ticket.status_changed", "detail": {"id": "7"}}).encode()
        answer = client.post(setup.webhook_path, content=body, headers=fake_zendesk.sign(body))
        assert answer.status_code == 200
        assert answer.json()["status"] == "ignored"
        assert count(engine, "SELECT count(*) FROM zendesk_tickets") == 0

    def test_zendesks_ticket_event_payload_is_read_too(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup(rules=[{"tags": ["vip"], "scene": "other_scene"}])
        detail = {"id": "77", "subject": "Hi", "tags": ["vip", "billing"], "group_id": "5"}
        body = json.dumps({"type": "zen:event-type:ticket.created", "detail": detail}).encode()
        answer = client.post(setup.webhook_path, content=body, headers=fake_zendesk.sign(body))
        assert answer.status_code == 202, answer.text
        row = ticket_row(engine, 77)
        assert (row.event, row.tags, row.group_id) == ("ticket.created", ["vip", "billing"], 5)
        assert row.matched_by == "rule 1"
        assert row.scene_id == setup.other_scene_id

    def test_a_signed_body_that_is_not_a_ticket_event_is_422(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        for body in (b"not json", b"[]", b'{"ticket": {"subject": "no id"}}', b'{"ticket": {"id": "-3"}}'):
            problem(client.post(setup.webhook_path, content=body, headers=fake_zendesk.sign(body)), 422)
        assert count(engine, "SELECT count(*) FROM zendesk_tickets") == 0


RULES = [
    {"subject_keywords": ["refund", "money back"], "scene": "other_scene"},
    {"tags": ["vip"], "scene": "other_scene"},
    {"group_id": 360001, "subject_keywords": ["order"], "scene": "other_scene"},
]


class TestRules:
    @pytest.mark.parametrize(
        ("ticket", "matched_by"),
        [
            ({"subject": "I want a REFUND please"}, "rule 1"),
            ({"subject": "can I have my money back?"}, "rule 1"),
            ({"subject": "refunds are words too", "tags": ["vip"]}, "rule 2"),  # not the word "refund"
            ({"subject": "where is my order", "group_id": 360001}, "rule 3"),
            ({"subject": "where is my order", "group_id": 999}, "default"),  # both conditions must hold
            ({"subject": "hello", "tags": ["billing"]}, "default"),
        ],
    )
    def test_the_first_rule_that_matches_picks_the_template_and_scene(
        self,
        client: TestClient,
        make_setup: MakeSetup,
        fake_zendesk: FakeZendesk,
        engine: DbEngine,
        ticket: dict[str, Any],
        matched_by: str,
    ) -> None:
        setup = make_setup(rules=RULES)
        answer = send(client, setup, fake_zendesk, 100, **ticket)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "accepted"
        row = ticket_row(engine, 100)
        assert (row.status, row.matched_by, row.template_id) == ("swapping", matched_by, setup.template_id)
        assert row.scene_id == (setup.scene_id if matched_by == "default" else setup.other_scene_id)
        assert balance(engine, setup.payer_account_id) == (10, 1)  # held at submit
        assert audit_actions(engine, setup.tenant.id)[-1] == "zendesk.ticket.accepted"

    def test_a_ticket_no_rule_matches_is_skipped_audited_and_charged_nothing(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup(rules=RULES, default=False)
        answer = send(client, setup, fake_zendesk, 101, subject="just saying hi")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "skipped", "ticket_id": 101, "detail": "no_matching_rule"}
        row = ticket_row(engine, 101)
        assert (row.status, row.reason, row.job_id, row.result_id) == ("skipped", "no_matching_rule", None, None)
        assert count(engine, "SELECT count(*) FROM jobs") == 0
        assert balance(engine, setup.payer_account_id) == (10, 0)
        assert audit_actions(engine, setup.tenant.id)[-1] == "zendesk.ticket.skipped"
        listed = client.get(f"{setup.base}/tickets", headers=setup.admin).json()["items"]
        assert [(t["zendesk_ticket_id"], t["status"], t["reason"]) for t in listed] == [
            (101, "skipped", "no_matching_rule")
        ]

    def test_a_disabled_connector_skips_tickets(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        disable = {"base_url": fake_zendesk.base_url, "api_email": fake_zendesk.email, "enabled": False}
        body = {**disable, "integration_user_id": setup.payer_id}
        assert client.put(setup.base, json=body, headers=setup.admin).status_code == 200
        answer = send(client, setup, fake_zendesk, 102)
        assert answer.json()["detail"] == "connector_disabled"
        assert balance(engine, setup.payer_account_id) == (10, 0)

    def test_a_suspended_tenant_skips_tickets_even_cached_ones(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup()
        assert send(client, setup, fake_zendesk, 104).status_code == 202
        with engine.begin() as conn:
            conn.execute(text("UPDATE tenants SET status = 'suspended' WHERE id = :id"), {"id": setup.tenant.id})
        answer = send(client, setup, fake_zendesk, 105)  # its content's job is in flight: it would be free
        assert answer.json()["detail"] == "tenant_suspended"
        assert ticket_row(engine, 105).result_id is None

    def test_a_payer_without_tokens_leaves_the_ticket_skipped_not_failed(
        self, client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine
    ) -> None:
        setup = make_setup(tokens=0)
        answer = send(client, setup, fake_zendesk, 103)
        assert answer.status_code == 200, answer.text
        assert answer.json()["detail"] == "insufficient_tokens"
        assert count(engine, "SELECT count(*) FROM jobs") + count(engine, "SELECT count(*) FROM holds") == 0
        assert count(engine, "SELECT count(*) FROM zendesk_results") == 0
        assert ticket_row(engine, 103).reason == "insufficient_tokens"
