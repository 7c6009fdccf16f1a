"""Tenants, users and keys in chromium against a real `facemint serve`: an operator creates a tenant, a user in it
and a key for that user (shown once, gone after a reload); a tenant admin reaching for another tenant by URL gets
404."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint.api_keys.orm import ApiKey
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import create_tenant, create_user
from tests.platform.console.browser.browser_helpers import sign_in


def test_an_operator_creates_a_tenant_a_user_and_a_key_seen_once(page: Page, session: Session) -> None:
    operator = create_user(session, role=Role.operator)
    sign_in(page, operator.email, path="/admin/tenants")

    new_tenant = page.locator("#new-tenant")
    new_tenant.locator("input[name=name]").fill("Flow Co")
    new_tenant.locator("select[name=plan]").select_option("pro")
    new_tenant.get_by_role("button", name="Create tenant").click()
    expect(page.get_by_role("heading", name="Flow Co")).to_be_visible()
    tenant = session.scalars(select(Tenant).where(Tenant.name == "Flow Co")).one()
    assert page.url.endswith(f"/admin/tenants/{tenant.id}")
    assert tenant.plan == "pro"

    page.get_by_role("link", name="New user in Flow Co").click()
    form = page.locator("#new-user")
    form.locator("input[name=email]").fill("dev@flow.test")
    form.locator("select[name=role]").select_option("member")
    form.locator("input[name=password]").fill("a-long-password")
    form.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("heading", name="dev@flow.test")).to_be_visible()
    user = session.scalars(select(User).where(User.email == "dev@flow.test")).one()
    assert user.tenant_id == tenant.id

    page.get_by_role("link", name="Issue a key").click()
    issue = page.locator("#issue-form")
    issue.locator("input[name=name]").fill("flow key")
    issue.get_by_role("button", name="Issue key").click()
    shown = page.locator("#new-key")
    expect(shown).to_have_text(re.compile(r"^fmk_\S+$"))
    plaintext = shown.inner_text()
    api_key = session.scalars(select(ApiKey).where(ApiKey.user_id == user.id)).one()
    assert api_key.public_id in plaintext
    # The key is in that one answer only: a reload draws the form again, without it.
    page.reload()
    expect(page.locator("#issue-form")).to_be_visible()
    assert page.locator("#new-key").count() == 0
    assert plaintext not in page.content()


def test_a_tenant_admin_reaching_for_another_tenant_gets_404(page: Page, session: Session) -> None:
    mine, theirs = create_tenant(session, name="Mine Inc"), create_tenant(session, name="Theirs Inc")
    admin = create_user(session, tenant=mine, role=Role.tenant_admin)
    sign_in(page, admin.email, path="/admin/tenants")
    expect(page.locator("#list tbody tr")).to_have_count(1)
    expect(page.locator("#list")).to_contain_text("Mine Inc")
    response = page.goto(f"/admin/tenants/{theirs.id}")
    assert response is not None
    assert response.status == 404
    expect(page.locator("[data-code=tenant_not_found]")).to_be_visible()
    assert "Theirs Inc" not in page.content()
