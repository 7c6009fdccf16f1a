"""Recharges and approvals in chromium against a real `facemint serve`: one recharge, a bulk CSV previewed then
confirmed (balances changed once, even after a double click and a re-post), and a held recharge approved by a
second operator (the first one is shown no approve button)."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import BrowserContext, FilePayload, Page, expect
from sqlalchemy.orm import Session

from facemint.users.orm import Role
from tests.factories import create_tenant, create_user
from tests.platform.console.browser.browser_helpers import sign_in
from tests.platform.recharge_helpers import balance_of, count, recharge_transactions

THRESHOLD = 100_000  # the default approval_threshold_amount


def test_a_single_recharge(page: Page, session: Session) -> None:
    operator = create_user(session, role=Role.operator)
    member = create_user(session)
    sign_in(page, operator.email, path="/admin/recharges")
    single = page.locator("#single")
    single.get_by_label("Credit").select_option("email")
    single.get_by_label("Email or id").fill(member.email)
    single.get_by_label("Tokens").fill("120")
    single.get_by_label("Reason").fill("welcome bonus")
    single.get_by_role("button", name="Recharge").dblclick()  # a double click sends it once
    expect(page.locator('[data-outcome="applied"]')).to_contain_text(member.email)
    expect(page.locator('[data-outcome="applied"]')).to_contain_text("120")
    assert balance_of(session, member.account_id) == 120
    assert recharge_transactions(session) == 1


def test_bulk_preview_then_confirm_changes_balances_once(page: Page, session: Session) -> None:
    operator = create_user(session, role=Role.operator)
    tenant = create_tenant(session)
    alice, bob = create_user(session, tenant=tenant), create_user(session, tenant=tenant)
    csv = f"email,amount,reference\n{alice.email},100,a\nnobody@example.test,5,\n{bob.email},40,b\n"
    sign_in(page, operator.email, path="/admin/recharges")
    bulk = page.locator("#bulk")
    upload: FilePayload = {"name": "bonus.csv", "mimeType": "text/csv", "buffer": csv.encode()}
    bulk.get_by_label("File").set_input_files(files=upload)
    bulk.get_by_label("Mode").select_option("partial")
    bulk.get_by_label("Reason").fill("november bonus")
    bulk.get_by_role("button", name="Preview").click()

    preview = page.locator("#preview")
    expect(preview).to_have_attribute("data-rows", "3")
    expect(preview).to_have_attribute("data-total", "140")
    expect(page.locator('tr[data-row="2"][data-code="unknown_user"]')).to_be_visible()
    assert balance_of(session, alice.account_id) == 0, "a preview applies nothing"
    preview_url = page.url
    csrf = page.locator("body").get_attribute("data-csrf")
    confirm_path = re.sub(r"^https?://[^/]+", "", preview_url) + "/confirm"

    page.get_by_role("button", name=re.compile("^Apply 2 rows")).dblclick()
    expect(page.locator("#run")).to_have_attribute("data-phase", "committed", timeout=30_000)
    expect(page.locator('[data-outcome="applied"]')).to_be_visible()

    # Back to the preview: confirmed already, so it offers the result rather than a second apply.
    page.go_back()
    expect(page.locator("#preview")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Apply"))).to_have_count(0)
    # And the confirm posted again by hand (a resubmitted form): the same key replays the stored batch.
    reposted = page.request.post(confirm_path, form={"csrf_token": str(csrf)})
    assert reposted.ok, reposted.text()
    page.goto(reposted.url)
    expect(page.locator("#run")).to_have_attribute("data-phase", "committed", timeout=30_000)

    assert balance_of(session, alice.account_id) == 100
    assert balance_of(session, bob.account_id) == 40
    assert count(session, "recharge_batches") == 1
    assert recharge_transactions(session) == 1

    page.get_by_role("link", name=re.compile(r"^#\d+$")).click()
    expect(page.locator("table.rows")).to_contain_text(alice.email)
    expect(page.locator("table.rows")).to_contain_text(bob.email)


def test_a_held_recharge_approved_by_a_second_operator(
    page: Page, new_context: Callable[..., BrowserContext], session: Session
) -> None:
    requester = create_user(session, role=Role.operator)
    approver = create_user(session, role=Role.operator)
    member = create_user(session)
    sign_in(page, requester.email, path="/admin/recharges")
    single = page.locator("#single")
    single.get_by_label("Credit").select_option("user_id")
    single.get_by_label("Email or id").fill(str(member.id))
    single.get_by_label("Tokens").fill(str(THRESHOLD + 1))
    single.get_by_label("Reason").fill("enterprise deal")
    single.get_by_role("button", name="Recharge").click()
    held = page.locator('[data-outcome="held"]')
    expect(held).to_be_visible()
    held.get_by_role("link", name=re.compile("Approval #")).click()
    expect(page.locator("#own-request")).to_be_visible()
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    approval_url = re.sub(r"^https?://[^/]+", "", page.url)
    assert balance_of(session, member.account_id) == 0

    second = new_context().new_page()
    sign_in(second, approver.email, path="/admin/approvals")
    second.locator(f'a[href="{approval_url}"]').click()
    second.get_by_label("Note").first.fill("checked the contract")
    second.once("dialog", lambda dialog: dialog.accept())  # "Approve and apply ... tokens?"
    second.get_by_role("button", name="Approve").click()
    expect(second.locator('[data-decided="approved"]')).to_be_visible()
    expect(second.locator("main")).to_contain_text("checked the contract")
    assert balance_of(session, member.account_id) == THRESHOLD + 1

    page.reload()
    expect(page.locator("h1 .badge")).to_have_text("approved")
