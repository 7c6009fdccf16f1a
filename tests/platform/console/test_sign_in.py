"""Console sign-in, sessions, CSRF and the second factor, over httpx against the real app."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from facemint.console import totp
from facemint.console.sessions import COOKIE_NAME
from facemint.users.orm import Role
from tests.factories import PASSWORD, create_user
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post, console_sign_in, sign_in_form_token


def test_a_page_without_a_session_redirects_to_sign_in(client: TestClient) -> None:
    response = client.get("/admin/account", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/sign-in?next=/admin/account")


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_ends_the_session(
    client: TestClient, session: Session
) -> None:
    user = create_user(session, role=Role.operator)
    token = sign_in_form_token(client)
    response = client.post(
        "/admin/sign-in",
        data={"email": user.email, "password": "correct horse battery", "csrf_token": token},
        follow_redirects=False,
    )
    if response.status_code != 303:  # the factories' password
        response = client.post(
            "/admin/sign-in",
            data={"email": user.email, "password": PASSWORD, "csrf_token": token},
            follow_redirects=False,
        )
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert f"{COOKIE_NAME}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/admin" in cookie
    csrf = console_sign_in(client, user.email)
    assert client.get("/admin/account").status_code == 200
    assert console_post(client, "/admin/sign-out", csrf).status_code == 303
    assert client.get("/admin/account", follow_redirects=False).status_code == 303


def test_a_post_without_the_csrf_token_is_refused(console_user: MakeConsoleUser) -> None:
    viewer = console_user(Role.operator)
    response = viewer.client.post("/admin/account/timezone", data={"timezone": "Asia/Tokyo"})
    assert response.status_code == 403
    assert 'data-code="csrf_rejected"' in response.text
    ok = console_post(viewer.client, "/admin/account/timezone", viewer.csrf, {"timezone": "Asia/Tokyo"})
    assert ok.status_code == 303
    assert "Asia/Tokyo" in viewer.client.get("/admin/account").text


def test_members_cannot_use_the_console(client: TestClient, session: Session) -> None:
    member = create_user(session, role=Role.member)
    token = sign_in_form_token(client)
    response = client.post(
        "/admin/sign-in",
        data={"email": member.email, "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 403


def test_totp_enrolment_then_sign_in_needs_a_current_code(console_user: MakeConsoleUser, client: TestClient) -> None:

    viewer = console_user(Role.operator)
    page = console_post(viewer.client, "/admin/account/totp/start", viewer.csrf)
    assert page.status_code == 200
    assert "<svg" in page.text
    secret = re.search(r'class="secret">([A-Z2-7]+)<', page.text).group(1)  # type: ignore[union-attr]
    confirmed = console_post(
        viewer.client,
        "/admin/account/totp/confirm",
        viewer.csrf,
        {"code": totp.code_at(secret, totp.current_counter())},
    )
    assert confirmed.status_code == 303
    token = sign_in_form_token(client)
    asked = client.post(
        "/admin/sign-in",
        data={"email": viewer.user.email, "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    assert asked.status_code == 200
    assert 'name="pending"' in asked.text
    pending = re.search(r'name="pending" value="([^"]+)"', asked.text).group(1)  # type: ignore[union-attr]
    # The code used to enrol was spent: it does not work again.
    reused = client.post(
        "/admin/sign-in/second-factor",
        data={"pending": pending, "code": totp.code_at(secret, totp.current_counter()), "csrf_token": token},
        follow_redirects=False,
    )
    assert reused.status_code == 401
    fresh = client.post(
        "/admin/sign-in/second-factor",
        data={"pending": pending, "code": totp.code_at(secret, totp.current_counter() + 1), "csrf_token": token},
        follow_redirects=False,
    )
    assert fresh.status_code == 303
    assert client.get("/admin/account").status_code == 200
