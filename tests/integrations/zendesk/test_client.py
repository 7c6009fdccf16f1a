"""The Zendesk client: what it may call, and which failures it retries."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from facemint.config import Settings
from facemint.integrations.zendesk.client import ZendeskClient, ZendeskError, retry_after_seconds
from tests.integrations.zendesk.fake_server import FakeZendesk


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30.0)
    assert retry_after_seconds(formatdate(999_000, usegmt=True), now=1_000_000) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_a_base_url_the_settings_no_longer_allow_is_not_called(fake_zendesk: FakeZendesk) -> None:
    with pytest.raises(ZendeskError) as refused:
        ZendeskClient(base_url=fake_zendesk.base_url, email="a@b.c", token="t", settings=Settings(env="dev"))
    assert not refused.value.retry
    assert fake_zendesk.received == []


def test_failures_say_whether_to_retry(fake_zendesk: FakeZendesk) -> None:
    settings = Settings(env="dev", zendesk_allowed_base_urls=[fake_zendesk.base_url], zendesk_timeout_seconds=2)
    good = {"base_url": fake_zendesk.base_url, "email": fake_zendesk.email, "settings": settings}
    with ZendeskClient(**good, token="wrong") as client, pytest.raises(ZendeskError) as bad_token:
        client.upload(filename="a.png", data=b"x", content_type="image/png")
    assert (bad_token.value.status, bad_token.value.retry) == (401, False)
    fake_zendesk.fail("PUT", "ticket", 429, retry_after="12")
    fake_zendesk.fail("PUT", "ticket", 503)
    with ZendeskClient(**good, token=fake_zendesk.api_token) as client:
        for status, retry_after in ((429, 12.0), (503, None)):
            with pytest.raises(ZendeskError) as failed:
                client.add_comment(ticket_id=1, body="hi", upload_token="t")
            assert (failed.value.status, failed.value.retry, failed.value.retry_after) == (status, True, retry_after)
    closed = {
        **good,
        "base_url": "http://127.0.0.1:9",
        "settings": Settings(env="dev", zendesk_allowed_base_urls=["http://127.0.0.1:9"], zendesk_timeout_seconds=2),
    }
    with ZendeskClient(**closed, token="t") as client, pytest.raises(ZendeskError) as unreachable:
        client.add_comment(ticket_id=1, body="hi", upload_token="t")
    assert (unreachable.value.status, unreachable.value.retry) == (None, True)
