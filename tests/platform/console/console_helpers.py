"""Helpers shared by the console tests: signing in through the console's own form (httpx, no browser), posting
with the session's CSRF token, reading what a page says (a list's rows, its pager's next link, a form's key)."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.factories import PASSWORD

_CSRF = re.compile(r'data-csrf="([^"]+)"')
_FORM_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_NEXT_PAGE = re.compile(r'href="([^"]+)"[^>]*rel="next"')
_IDEMPOTENCY_KEY = re.compile(r'name="idempotency_key" value="([^"]+)"')


def sign_in_form_token(client: TestClient) -> str:
    page = client.get("/admin/sign-in")
    assert page.status_code == 200, page.text
    match = _FORM_CSRF.search(page.text)
    assert match, "the sign-in form carries a CSRF token"
    return match.group(1)


def console_sign_in(client: TestClient, email: str, password: str = PASSWORD) -> str:
    """Sign in through the console's form; returns the session's CSRF token (for `console_post`)."""
    token = sign_in_form_token(client)
    response = client.post(
        "/admin/sign-in",
        data={"email": email, "password": password, "csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_of(client, "/admin/account")


def csrf_of(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = _CSRF.search(page.text)
    assert match, "a signed-in page names its CSRF token"
    return match.group(1)


def console_post(client: TestClient, path: str, csrf: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A plain form post with the CSRF token, not following the redirect that answers success."""
    return client.post(path, data={**(data or {}), "csrf_token": csrf}, follow_redirects=False, **kwargs)


def row_ids(html: str, attribute: str) -> list[int]:
    """The ids a list page's rows carry (`<tr data-...-id="N">`), in page order."""
    return [int(value) for value in re.findall(rf'<tr {attribute}="(\d+)">', html)]


def next_page_url(html: str) -> str | None:
    """The pager's link to the next (older) page, as a URL to get; None on the last page."""
    match = _NEXT_PAGE.search(html)
    return match.group(1).replace("&amp;", "&") if match else None


def idempotency_key_of(html: str) -> str:
    """The Idempotency-Key a recharge form was drawn with."""
    match = _IDEMPOTENCY_KEY.search(html)
    assert match, "the form carries an idempotency key"
    return match.group(1)


def htmx_get(client: TestClient, path: str, **kwargs: Any) -> Any:
    return client.get(path, headers={"HX-Request": "true"}, **kwargs)
