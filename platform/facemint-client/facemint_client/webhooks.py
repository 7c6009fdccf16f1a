"""Verifying webhooks the way Facemint signs them: Standard Webhooks (https://www.standardwebhooks.com).

Each delivery carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`: space-separated
`v1,<base64 HMAC-SHA256>` over `"{id}.{timestamp}.{body}"`, keyed with the tenant's secret (`whsec_` followed by
the base64 of the key; `client.admin.tenants.webhook_secret(tenant_id)`). Verify the raw body exactly as received,
before parsing it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from facemint_client._convert import from_json
from facemint_client.errors import WebhookVerificationError
from facemint_client.models import Job, WebhookEvent

SECRET_PREFIX = "whsec_"


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from exc


def sign_webhook(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message (what the sender computes)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode("ascii")


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = 300,
    *,
    now: float | None = None,
) -> WebhookEvent:
    """Check a received webhook and return its event; raises `WebhookVerificationError` when a header is missing,
    the timestamp is more than `tolerance` seconds from now (either way: a replayed old delivery), or no
    signature matches (the body was changed, or another secret signed it). Any one of several signatures may
    match (a sender signs with two secrets while rotating). Header names are matched case-insensitively."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not raw_timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number of seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance:g} s from now")
    payload = body.encode() if isinstance(body, str) else bytes(body)
    expected = sign_webhook(secret, msg_id=msg_id, timestamp=timestamp, body=payload).encode()
    matched = False
    for candidate in signatures.split():
        matched |= hmac.compare_digest(candidate.encode(), expected)  # every one compared: no timing tell
    if not matched:
        raise WebhookVerificationError("no webhook-signature matches")
    try:
        event = json.loads(payload)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    job = from_json(Job, data) if str(event.get("type", "")).startswith("job.") and data else None
    stamp = event.get("timestamp")
    return WebhookEvent(
        id=msg_id,
        type=str(event.get("type", "")),
        timestamp=str(stamp) if stamp is not None else None,
        data=data or {},
        job=job,
    )
