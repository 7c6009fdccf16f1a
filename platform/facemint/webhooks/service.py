"""Webhooks for jobs' terminal states: the outbox (an event row written in the settlement transaction), Standard
Webhooks signing and the receiver-side check, reading a job's deliveries, and the tenant's signing secret. The
sender (claiming due events fairly across tenants, leases, attempts) is in sender.py; URL checks in urls.py.

Signing follows Standard Webhooks (https://www.standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the tenant's secret."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facemint.audit import service as audit
from facemint.context import RequestContext
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Tenant, new_webhook_secret
from facemint.webhooks.orm import EventStatus, WebhookDelivery, WebhookEvent
from facemint.webhooks.schemas import WebhookDeliveryRead, WebhookEventRead

# Checked where a job names its URL (jobs.endpoints calls it through this module).
from facemint.webhooks.urls import Resolver, validate_webhook_url

__all__ = ["Resolver", "validate_webhook_url"]

SECRET_PREFIX = "whsec_"


# --- Signing -------------------------------------------------------------------------------------------------


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from exc


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is authentic and fresh (what a receiver runs). `headers` may be any mapping;
    names are matched case-insensitively. Any one of several space-separated signatures may match (a sender
    signs with more than one secret while rotating)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not raw_timestamp or not signatures:
        return False
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    payload = body.encode() if isinstance(body, str) else body
    expected = sign(secret, msg_id=msg_id, timestamp=timestamp, body=payload).encode()
    matched = False
    for candidate in signatures.split():
        # Every candidate is compared, so timing says nothing about which one matched.
        matched |= hmac.compare_digest(candidate.encode(), expected)
    return matched


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and sent: compact JSON with sorted keys."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


# --- The outbox ----------------------------------------------------------------------------------------------


def record_event(
    session: Session, *, job_id: int, tenant_id: int, url: str, event_type: str, payload: dict[str, Any]
) -> None:
    """Queue a webhook, in the caller's transaction (the job's settlement), so it exists iff the state does."""
    session.add(
        WebhookEvent(
            public_id=f"msg_{secrets.token_hex(12)}",
            job_id=job_id,
            tenant_id=tenant_id,
            url=url,
            event_type=event_type,
            payload=payload,
            status=EventStatus.pending.value,
            attempts=0,
            next_attempt_at=func.now(),
        )
    )


def record_tenant_event(session: Session, *, tenant_id: int, event_type: str, payload: dict[str, Any]) -> bool:
    """Queue an account event (one that belongs to no job: low balance, abuse) to the tenant's events URL, in the
    caller's transaction. False when the tenant names no such URL: nothing is queued."""
    url = session.scalar(select(Tenant.events_webhook_url).where(Tenant.id == tenant_id))
    if url is None:
        return False
    session.add(
        WebhookEvent(
            public_id=f"msg_{secrets.token_hex(12)}",
            job_id=None,
            tenant_id=tenant_id,
            url=url,
            event_type=event_type,
            payload=payload,
            status=EventStatus.pending.value,
            attempts=0,
            next_attempt_at=func.now(),
        )
    )
    return True


def list_tenant_events(session: Session, *, tenant_id: int, limit: int = 100) -> list[WebhookEventRead]:
    """A tenant's account events (those of no job), newest first, each with its attempts. The caller checks the
    tenant is visible."""
    events = list(
        session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.tenant_id == tenant_id, WebhookEvent.job_id.is_(None))
            .order_by(WebhookEvent.id.desc())
            .limit(limit)
        )
    )
    return _with_deliveries(session, events)


# --- Reading -------------------------------------------------------------------------------------------------


def list_deliveries(session: Session, *, job_id: int) -> list[WebhookEventRead]:
    """A job's webhook events, oldest first, each with its attempts. The caller checks the job is visible."""
    events = list(session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.id)))
    return _with_deliveries(session, events)


def _with_deliveries(session: Session, events: list[WebhookEvent]) -> list[WebhookEventRead]:
    deliveries: dict[int, list[WebhookDeliveryRead]] = {event.id: [] for event in events}
    if events:
        for delivery in session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id.in_(list(deliveries)))
            .order_by(WebhookDelivery.event_id, WebhookDelivery.id)
        ):
            deliveries[delivery.event_id].append(WebhookDeliveryRead.model_validate(delivery))
    return [
        WebhookEventRead(
            id=event.public_id,
            event_type=event.event_type,
            payload=event.payload,
            status=EventStatus(event.status),
            attempts=event.attempts,
            next_attempt_at=event.next_attempt_at if event.status == EventStatus.pending.value else None,
            delivered_at=event.delivered_at,
            created_at=event.created_at,
            deliveries=deliveries[event.id],
        )
        for event in events
    ]


# --- The tenant's secret -------------------------------------------------------------------------------------


def get_secret(session: Session, *, tenant_id: int, tenant_scope: int | None) -> str:
    return tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope).webhook_secret


def rotate_secret(session: Session, *, context: RequestContext, tenant_id: int, tenant_scope: int | None) -> str:
    """Replace the tenant's signing secret; every attempt from now on (retries included) is signed with it."""
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    before = _fingerprint(tenant.webhook_secret)
    tenant.webhook_secret = new_webhook_secret()
    session.flush()
    audit.record(
        session,
        context=context,
        action="tenant.webhook_secret.rotate",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
        # Fingerprints, never the secret: the trail shows that it changed, not what to.
        before={"secret_sha256": before},
        after={"secret_sha256": _fingerprint(tenant.webhook_secret)},
    )
    return tenant.webhook_secret


def set_events_url(
    session: Session, *, context: RequestContext, tenant_id: int, tenant_scope: int | None, url: str | None
) -> str | None:
    """Point the tenant's account events at `url` (already checked by `validate_webhook_url`), or stop them."""
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    before = tenant.events_webhook_url
    tenant.events_webhook_url = url
    session.flush()
    if before != url:
        audit.record(
            session,
            context=context,
            action="tenant.events_webhook.update",
            target_type="tenant",
            target_id=tenant.id,
            tenant_id=tenant.id,
            before={"url": before},
            after={"url": url},
        )
    return url


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]
