"""Sign in and out, a second factor enrolled and then asked for, and a post without its CSRF token, in chromium
against a real `facemint serve`."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from facemint.console import totp
from facemint.users.orm import Role
from tests.factories import PASSWORD, create_user
from tests.platform.console.browser.browser_helpers import sign_in, sign_out


def test_sign_in_and_out(page: Page, session: Session) -> None:
    operator = create_user(session, role=Role.operator)
    page.goto("/admin/account")
    assert "/admin/sign-in" in page.url  # a page without a session sends the browser to sign in
    page.get_by_label("Email").fill(operator.email)
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("[data-code=unauthorized]")).to_be_visible()
    sign_in(page, operator.email, path="/admin/account")
    assert page.url.endswith("/admin/account")  # back where the browser was sent from
    cookies = {c["name"]: c for c in page.context.cookies()}
    session_cookie = cookies["facemint_console"]
    assert session_cookie["httpOnly"] is True
    assert session_cookie["sameSite"] == "Strict"
    assert page.evaluate("() => document.cookie").find("facemint_console=") == -1  # not readable by scripts
    sign_out(page)
    page.goto("/admin/account")
    assert "/admin/sign-in" in page.url  # the session is gone server-side


def test_totp_enrol_then_sign_in_with_a_code(page: Page, session: Session) -> None:
    operator = create_user(session, role=Role.finance)
    sign_in(page, operator.email, path="/admin/account")
    page.get_by_role("button", name="Enrol a second factor").click()
    expect(page.locator(".qr svg")).to_be_visible()  # the QR code, drawn inline
    secret = page.locator("code.secret").inner_text()
    page.get_by_label("Code from your authenticator").fill(totp.code_at(secret, totp.current_counter()))
    page.get_by_role("button", name="Confirm enrolment").click()
    expect(page.locator(".ok")).to_contain_text("A second factor is enrolled")
    sign_out(page)

    page.get_by_label("Email").fill(operator.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
    page.get_by_label("Code").fill("000000" if totp.code_at(secret, totp.current_counter()) != "000000" else "111111")
    page.get_by_role("button", name="Verify").click()
    expect(page.locator(".alert-error")).to_be_visible()  # a wrong code is refused
    page.get_by_label("Code").fill(totp.code_at(secret, totp.current_counter() + 1))
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("header.top")).to_contain_text(operator.email)


def test_a_post_without_its_csrf_token_is_refused(page: Page, session: Session) -> None:
    operator = create_user(session, role=Role.operator)
    sign_in(page, operator.email, path="/admin/account")
    # The form as a forger would send it: the session cookie goes along (same site), the token does not.
    page.evaluate("() => document.querySelector('form[action$=\"/account/timezone\"] input[name=csrf_token]').remove()")
    page.locator("input[name=timezone]").fill("Asia/Tokyo")
    page.get_by_role("button", name="Use this zone").click()
    expect(page.locator("[data-code=csrf_rejected]")).to_be_visible()
    page.goto("/admin/account")
    expect(page.locator("header.top .tz")).to_have_text("UTC")  # nothing changed
    page.locator("input[name=timezone]").fill("Asia/Tokyo")
    page.get_by_role("button", name="Use this zone").click()
    expect(page.locator("header.top .tz")).to_have_text("Asia/Tokyo")
