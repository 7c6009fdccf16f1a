"""The harness itself: chromium launches, the live server serves, and it runs on the tests' own database, Redis
and settings, so what a test seeds is what the browser sees."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from facemint.config import Settings
from tests.factories import bearer, create_user, fund, issue_key
from tests.platform.console.browser.conftest import LiveServer, settings_env


def test_chromium_loads_a_page_from_the_live_server(page: Page, live_server: LiveServer) -> None:
    response = page.goto("/healthz")
    assert response is not None
    assert response.status == 200
    assert page.url == f"{live_server.url}/healthz"
    expect(page.locator("body")).to_contain_text('"status":"ok"')
    assert page.evaluate("() => JSON.parse(document.body.innerText).status") == "ok"


def test_the_server_sees_what_the_test_seeds(page: Page, session: Session, settings: Settings) -> None:
    """A key issued by the factories (with the test process's pepper) works on the server, and the balance it
    reads is the one the test funded: the same database and the same secrets."""
    user = create_user(session)
    fund(session, account_id=user.account_id, amount=7)
    key = issue_key(session, settings, user)
    response = page.request.get("/v1/balance", headers=bearer(key))
    assert response.status == 200, response.text()
    assert response.json()["balance"] == 7


def test_the_server_reads_back_the_tests_settings(
    live_server: LiveServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every setting the server is started with reads back as the test process's own (its address and data
    directory aside)."""
    for name in [name for name in os.environ if name.startswith("FACEMINT_")]:
        monkeypatch.delenv(name)
    for name, value in settings_env(live_server.settings).items():
        monkeypatch.setenv(name, value)
    assert Settings() == live_server.settings
    differing = {
        name for name in Settings.model_fields if getattr(live_server.settings, name) != getattr(settings, name)
    }
    assert differing <= {"data_dir", "host", "port", "api_url"}
