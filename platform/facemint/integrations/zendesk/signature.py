"""Zendesk's webhook signatures: `X-Zendesk-Webhook-Signature` is base64(HMAC-SHA256(signing secret, timestamp +
body)), with the timestamp (ISO 8601, as Zendesk sends it) in `X-Zendesk-Webhook-Signature-Timestamp`. `sign` is
what Zendesk does (the tests' fake server signs with it); `check` is what the webhook endpoint runs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"
MISMATCH = "the signature does not match"


def sign(secret: str, *, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def timestamp_now(now: float | None = None) -> str:
    """A timestamp as Zendesk writes it: `2026-12-05T12:00:00Z`."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(timestamp: str) -> float | None:
    if len(timestamp) > 64:
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is None:  # Zendesk's are UTC; one without a zone is read as UTC, not as local time
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check(
    secret: str,
    *,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    tolerance_seconds: float,
    now: float | None = None,
) -> str | None:
    """None when the signature is Zendesk's over this body and fresh; else why not (for the refusal and the log)."""
    if not signature or not timestamp:
        return "the webhook is not signed (missing signature or timestamp header)"
    sent_at = _seconds(timestamp)
    if sent_at is None:
        return "the signature timestamp is not an ISO 8601 time"
    if abs((time.time() if now is None else now) - sent_at) > tolerance_seconds:
        return f"the signature timestamp is more than {tolerance_seconds:g} s away from now"
    expected = sign(secret, timestamp=timestamp, body=body).encode()
    if not hmac.compare_digest(signature.strip().encode(), expected):
        return MISMATCH
    return None
