from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from facemint.webhooks.orm import EventStatus


class WebhookDeliveryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    attempt: int
    response_status: int | None
    error: str | None
    duration_ms: float | None
    created_at: datetime


class WebhookEventRead(BaseModel):
    # The event's `webhook-id` (msg_...), which receivers see and deduplicate on.
    id: str
    event_type: str
    # What was (or will be) sent as the body.
    payload: dict[str, Any]
    status: EventStatus
    attempts: int
    # Only while pending; a delivered or failed event has no next attempt.
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    deliveries: list[WebhookDeliveryRead]


class WebhookSecretRead(BaseModel):
    secret: str


class EventsWebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Where the tenant's account events go (low balance, abuse); null stops them.
    url: str | None


class EventsWebhookRead(BaseModel):
    url: str | None
