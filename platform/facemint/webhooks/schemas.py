from __future__ import annotations

from datetime import datetime

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
    status: EventStatus
    attempts: int
    # Only while pending; a delivered or failed event has no next attempt.
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    deliveries: list[WebhookDeliveryRead]


class WebhookSecretRead(BaseModel):
    secret: str
