"""The API keys screen over httpx against the real app: the list and its filters, the issue form's scope picker
(only the issuer's own scopes within the user's role), the key shown once on a page nothing stores, revoking,
and who may do what."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint.api_keys.orm import ApiKey
from facemint.auth.scopes import Scope, scopes_for_role
from facemint.config import Settings
from facemint.users.orm import Role
from tests.factories import bearer, create_tenant, create_user, issue_key
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post, row_ids

_KEY = re.compile(r'id="new-key">(fmk_[^<]+)<')


def _offered(html: str) -> set[str]:
    return set(re.findall(r'name="scopes" value="([^"]+)"', html))


def _listed_ids(html: str) -> list[int]:
    return row_ids(html, "data-key-id")


def test_the_picker_offers_the_issuers_own_scopes_within_the_users_role(
    console_user: MakeConsoleUser, session: Session
) -> None:
    tenant = create_tenant(session)
    admin = console_user(Role.tenant_admin, tenant=tenant)
    member = create_user(session, tenant=tenant)
    operator = console_user(Role.operator)
    # A member's role scopes are all within a tenant admin's: the whole member set is offered.
    assert _offered(admin.client.get("/admin/api-keys/new", params={"user_id": member.id}).text) == {
        s.value for s in scopes_for_role(Role.member)
    }
    # For itself, a tenant admin is offered its own role's scopes, and an operator (every scope) the same for it.
    own = _offered(admin.client.get("/admin/api-keys/new", params={"user_id": admin.user.id}).text)
    assert own == {s.value for s in scopes_for_role(Role.tenant_admin)}
    assert _offered(operator.client.get("/admin/api-keys/new", params={"user_id": admin.user.id}).text) == own
    assert "tenants:write" not in own
    # A scope outside the picker, forged into the post, is the API's refusal.
    forged = console_post(
        admin.client,
        "/admin/api-keys",
        admin.csrf,
        {"user_id": str(admin.user.id), "name": "wide", "scopes": ["users:read", "tenants:write"]},
    )
    assert forged.status_code == 422
    assert 'data-code="scope_not_allowed"' in forged.text
    assert session.scalars(select(ApiKey)).all() == []


def test_a_key_is_shown_once_works_and_is_revoked(
    console_user: MakeConsoleUser, session: Session, client: TestClient, settings: Settings
) -> None:
    tenant = create_tenant(session)
    admin = console_user(Role.tenant_admin, tenant=tenant)
    member = create_user(session, tenant=tenant)
    issued = console_post(
        admin.client,
        "/admin/api-keys",
        admin.csrf,
        {"user_id": str(member.id), "name": "ci runner", "scopes": ["balance:read"], "expires_at": ""},
    )
    assert issued.status_code == 201
    assert issued.headers["cache-control"] == "no-store"
    plaintext = _KEY.search(issued.text).group(1)  # type: ignore[union-attr]
    api_key = session.scalars(select(ApiKey)).one()
    assert (api_key.user_id, api_key.scopes, api_key.name) == (member.id, ["balance:read"], "ci runner")
    assert plaintext.encode() not in api_key.secret_hash
    assert api_key.public_id in plaintext
    assert client.get("/v1/balance", headers=bearer(plaintext)).status_code == 200
    assert client.get("/v1/ledger", headers=bearer(plaintext)).status_code == 403  # only the scope picked
    # Nowhere else shows it again.
    for path in ("/admin/api-keys", f"/admin/users/{member.id}", f"/admin/api-keys/new?user_id={member.id}"):
        page = admin.client.get(path)
        assert page.status_code == 200, path
        assert plaintext not in page.text, path
    # The htmx form gets the fragment alone.
    fragment = admin.client.post(
        "/admin/api-keys",
        data={"user_id": str(member.id), "name": "htmx", "scopes": ["jobs:read"], "csrf_token": admin.csrf},
        headers={"HX-Request": "true"},
    )
    assert fragment.status_code == 201
    assert "<html" not in fragment.text
    assert _KEY.search(fragment.text)

    listed = admin.client.get("/admin/api-keys", params={"user_id": member.id}).text
    assert api_key.id in _listed_ids(listed)
    assert "ci runner" in listed
    revoked = console_post(admin.client, f"/admin/api-keys/{api_key.id}/revoke", admin.csrf)
    assert revoked.status_code == 303
    assert client.get("/v1/balance", headers=bearer(plaintext)).status_code == 401
    assert api_key.id not in _listed_ids(admin.client.get("/admin/api-keys").text)
    shown = admin.client.get("/admin/api-keys", params={"include_revoked": "true"}).text
    assert api_key.id in _listed_ids(shown)
    assert "badge-revoked" in shown


def test_an_expiry_is_read_in_the_viewers_zone(console_user: MakeConsoleUser, session: Session) -> None:
    operator = console_user(Role.operator)
    member = create_user(session)
    console_post(operator.client, "/admin/account/timezone", operator.csrf, {"timezone": "Asia/Tokyo"})
    issued = console_post(
        operator.client,
        "/admin/api-keys",
        operator.csrf,
        {"user_id": str(member.id), "name": "t", "scopes": ["jobs:read"], "expires_at": "2999-01-01T09:00"},
    )
    assert issued.status_code == 201
    api_key = session.scalars(select(ApiKey)).one()
    assert api_key.expires_at is not None
    assert api_key.expires_at.isoformat() == "2999-01-01T00:00:00+00:00"
    past = console_post(
        operator.client,
        "/admin/api-keys",
        operator.csrf,
        {"user_id": str(member.id), "name": "t", "scopes": ["jobs:read"], "expires_at": "2001-01-01T09:00"},
    )
    assert past.status_code == 422
    assert 'data-code="invalid_expiry"' in past.text


def test_tenant_admins_and_finance_are_held_to_what_the_api_allows(
    console_user: MakeConsoleUser, session: Session, settings: Settings
) -> None:
    mine, theirs = create_tenant(session), create_tenant(session)
    admin = console_user(Role.tenant_admin, tenant=mine)
    stranger = create_user(session, tenant=theirs)
    issue_key(session, settings, stranger, scopes=[Scope.jobs_read])
    foreign = session.scalars(select(ApiKey).where(ApiKey.user_id == stranger.id)).one()
    assert _listed_ids(admin.client.get("/admin/api-keys").text) == []
    assert admin.client.get("/admin/api-keys", params={"tenant_id": theirs.id}).status_code == 404
    assert admin.client.get("/admin/api-keys/new", params={"user_id": stranger.id}).status_code == 404
    assert console_post(admin.client, f"/admin/api-keys/{foreign.id}/revoke", admin.csrf).status_code == 404
    finance = console_user(Role.finance)
    listed = finance.client.get("/admin/api-keys").text
    assert foreign.id in _listed_ids(listed)
    assert "/revoke" not in listed
    assert "Issue a key" not in listed
    forged = console_post(finance.client, f"/admin/api-keys/{foreign.id}/revoke", finance.csrf)
    assert forged.status_code == 403
    assert 'data-code="insufficient_scope"' in forged.text
    session.expire_all()
    assert foreign.revoked_at is None
