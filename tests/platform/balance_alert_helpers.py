"""Plain helpers shared by the low-balance alert tests (the API, the platform's movements, jobs). No
fixtures live here."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint.balance_alerts.orm import BalanceAlert
from facemint.tenants.orm import Tenant
from facemint.webhooks.orm import WebhookEvent

# A public address (checked like any events URL, never contacted: no sender runs unless a test starts one).
EVENTS_URL = "https://93.184.216.34/facemint-events"


def name_events_url(session: Session, tenant_id: int, url: str | None = EVENTS_URL) -> None:
    session.get_one(Tenant, tenant_id).events_webhook_url = url
    session.commit()


def low_balance_events(session: Session, tenant_id: int) -> list[dict[str, Any]]:
    """The tenant's queued `balance.low` events' data, oldest first."""
    session.expire_all()
    payloads = session.scalars(
        select(WebhookEvent.payload)
        .where(WebhookEvent.tenant_id == tenant_id, WebhookEvent.event_type == "balance.low")
        .order_by(WebhookEvent.id)
    ).all()
    for payload in payloads:
        assert payload["type"] == "balance.low"
        assert payload["timestamp"]
    return [payload["data"] for payload in payloads]


def alert_of(session: Session, account_id: int) -> BalanceAlert:
    session.expire_all()
    return session.get_one(BalanceAlert, account_id)


def adjust(client: TestClient, headers: dict[str, str], *, user_id: int, amount: int) -> None:
    """An operator's adjustment of a user's account (positive credits, negative debits)."""
    response = client.post(
        "/admin/v1/adjustments",
        json={"user_id": user_id, "amount": amount, "reason": "alert test"},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
