"""`verify_webhook` against what the server signs: its own signing code, and a real delivery from a live API and
worker to a loopback receiver, with the tenant's secret read through the SDK."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import pytest

from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from facemint.webhooks import service as server_webhooks
from facemint_client import Facemint, WebhookVerificationError, sign_webhook, verify_webhook
from tests.jobs.conftest import SOURCE, TARGET, wait_for
from tests.platform.webhook_helpers import serve_receiver
from tests.sdk.conftest import MakePerson

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()


def signed_by_the_server(
    payload: dict[str, object], *, secret: str = SECRET, at: int | None = None
) -> tuple[dict[str, str], bytes]:
    """Headers and body exactly as the server's sender makes them."""
    body = server_webhooks.encode_body(payload)
    timestamp = int(time.time()) if at is None else at
    headers = {
        "webhook-id": "msg_0001",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": server_webhooks.sign(secret, msg_id="msg_0001", timestamp=timestamp, body=body),
    }
    return headers, body


EVENT = {"type": "job.canceled", "timestamp": "2026-12-05T10:00:00+00:00", "data": {"id": "job_x"}}


def test_what_the_server_signs_verifies() -> None:
    headers, body = signed_by_the_server(EVENT)
    event = verify_webhook(SECRET, headers, body)
    assert (event.id, event.type, event.data) == ("msg_0001", "job.canceled", {"id": "job_x"})
    # Header names in any case, and the body as text, as frameworks hand them over.
    assert verify_webhook(SECRET, {k.upper(): v for k, v in headers.items()}, body.decode()).id == "msg_0001"


def test_the_server_accepts_what_the_client_signs() -> None:
    body = json.dumps(EVENT).encode()
    now = int(time.time())
    signature = sign_webhook(SECRET, msg_id="msg_2", timestamp=now, body=body)
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(now), "webhook-signature": signature}
    assert server_webhooks.verify(SECRET, headers, body)


def test_a_tampered_body_is_refused() -> None:
    headers, body = signed_by_the_server(EVENT)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(SECRET, headers, body.replace(b"job_x", b"job_y"))


def test_another_secret_is_refused() -> None:
    headers, body = signed_by_the_server(EVENT)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(OTHER_SECRET, headers, body)


def test_an_old_or_future_timestamp_is_refused_even_when_signed() -> None:
    now = int(time.time())
    for at in (now - 301, now + 301):
        headers, body = signed_by_the_server(EVENT, at=at)
        with pytest.raises(WebhookVerificationError, match="timestamp"):
            verify_webhook(SECRET, headers, body)
    headers, body = signed_by_the_server(EVENT, at=now - 250)
    assert verify_webhook(SECRET, headers, body).type == "job.canceled"
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(SECRET, headers, body, tolerance=200)


def test_any_one_of_several_signatures_may_match_and_missing_headers_are_refused() -> None:
    headers, body = signed_by_the_server(EVENT)
    rotating = f"v1,{base64.b64encode(b'x' * 32).decode()} {headers['webhook-signature']}"
    assert verify_webhook(SECRET, {**headers, "webhook-signature": rotating}, body).id == "msg_0001"
    for missing in headers:
        with pytest.raises(WebhookVerificationError, match="missing"):
            verify_webhook(SECRET, {k: v for k, v in headers.items() if k != missing}, body)


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_a_real_delivery_verifies_with_the_tenants_secret_and_a_tampered_copy_does_not(
    client_for: Callable[..., Facemint], make_person: MakePerson, tenant: Tenant
) -> None:
    admin = client_for(make_person(Role.tenant_admin, tenant=tenant))
    member = client_for(make_person(Role.member, tenant=tenant, tokens=3))
    secret = admin.admin.tenants.webhook_secret(tenant.id)
    assert secret.startswith("whsec_")
    with serve_receiver() as receiver:
        job = member.jobs.submit(SOURCE, TARGET, webhook_url=receiver.url("/hook"))
        (call,) = wait_for(lambda: receiver.calls_to("/hook"), timeout=120)
    event = verify_webhook(secret, call.headers, call.body)
    assert event.type == "job.succeeded"
    assert event.job is not None
    assert (event.job.id, event.job.status, event.job.tokens_captured) == (job.id, "succeeded", 1)
    assert event.id == call.headers["webhook-id"]
    assert [e.id for e in member.jobs.webhooks(job.id)] == [event.id]
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, call.headers, call.body.replace(b'"succeeded"', b'"failed"'))
    with pytest.raises(WebhookVerificationError):
        verify_webhook(admin.admin.tenants.rotate_webhook_secret(tenant.id), call.headers, call.body)
