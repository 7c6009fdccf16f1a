"""Account events (those of no job: low balance, abuse): the tenant's events URL over the admin API, queueing in the
caller's transaction, delivery through the ordinary sender, and the tenant's events list."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from facemint.audit.orm import AuditEvent
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from facemint.webhooks import sender
from facemint.webhooks import service as webhooks
from facemint.webhooks.orm import WebhookEvent
from tests.conftest import make_settings
from tests.factories import create_tenant
from tests.platform.conftest import MakeCaller
from tests.platform.webhook_helpers import Receiver, serve_receiver, tenant_secret

PUBLIC_URL = "https://93.184.216.34/facemint-events"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as rec:
        yield rec


class TestEventsUrl:
    def test_tenant_admin_sets_and_clears_the_events_url_and_it_is_audited(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        path = f"/admin/v1/tenants/{tenant.id}/events-webhook"
        assert client.get(path, headers=admin.headers).json() == {"url": None}
        response = client.put(path, json={"url": PUBLIC_URL}, headers=admin.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"url": PUBLIC_URL}
        assert client.get(path, headers=admin.headers).json() == {"url": PUBLIC_URL}
        response = client.put(path, json={"url": None}, headers=admin.headers)
        assert response.json() == {"url": None}
        session.expire_all()
        assert session.get(Tenant, tenant.id).events_webhook_url is None  # type: ignore[union-attr]
        trail = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "tenant.events_webhook.update").order_by(AuditEvent.id)
        ).all()
        assert [(e.before, e.after) for e in trail] == [
            ({"url": None}, {"url": PUBLIC_URL}),
            ({"url": PUBLIC_URL}, {"url": None}),
        ]

    @pytest.mark.parametrize(
        "url", ["http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "ftp://93.184.216.34/x", "not a url"]
    )
    def test_private_or_malformed_urls_are_refused(
        self, client: TestClient, session: Session, make_caller: MakeCaller, url: str
    ) -> None:
        tenant = create_tenant(session)
        operator = make_caller(Role.operator)
        response = client.put(
            f"/admin/v1/tenants/{tenant.id}/events-webhook", json={"url": url}, headers=operator.headers
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        session.expire_all()
        assert session.get(Tenant, tenant.id).events_webhook_url is None  # type: ignore[union-attr]


class TestAccountEvents:
    def test_nothing_is_queued_without_an_events_url(self, session: Session) -> None:
        tenant = create_tenant(session)
        assert not webhooks.record_tenant_event(session, tenant_id=tenant.id, event_type="x.y", payload={"a": 1})
        session.flush()
        assert session.scalar(select(WebhookEvent).where(WebhookEvent.tenant_id == tenant.id)) is None

    def test_an_account_event_is_delivered_signed_and_listed_for_its_tenant_only(
        self,
        client: TestClient,
        session: Session,
        session_factory: sessionmaker[Session],
        database_url: str,
        redis_url: str,
        receiver: Receiver,
        make_caller: MakeCaller,
    ) -> None:
        tenant, other = create_tenant(session), create_tenant(session)
        session.get(Tenant, tenant.id).events_webhook_url = receiver.url("/events")  # type: ignore[union-attr]
        session.flush()
        payload = {"type": "balance.low", "data": {"user_id": 7, "available": 3}}
        assert webhooks.record_tenant_event(session, tenant_id=tenant.id, event_type="balance.low", payload=payload)
        session.commit()

        settings: Settings = make_settings(database_url, redis_url, webhook_allowed_networks=["127.0.0.0/8"])
        assert sender.deliver_due(session_factory, settings=settings) == 1
        [call] = receiver.calls_to("/events")
        assert webhooks.verify(tenant_secret(session, tenant.id), call.headers, call.body)
        assert call.body == webhooks.encode_body(payload)

        admin = make_caller(Role.tenant_admin, tenant)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/events", headers=admin.headers)
        assert response.status_code == 200, response.text
        [listed] = response.json()
        assert listed["event_type"] == "balance.low"
        assert listed["payload"] == payload
        assert listed["status"] == "delivered"
        assert [d["response_status"] for d in listed["deliveries"]] == [200]
        # Another tenant's admin sees neither the list nor that the tenant exists.
        stranger = make_caller(Role.tenant_admin, other)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/events", headers=stranger.headers)
        assert response.status_code == 404
        response = client.get(f"/admin/v1/tenants/{other.id}/events", headers=stranger.headers)
        assert response.json() == []
