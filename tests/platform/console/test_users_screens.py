"""The users screen over httpx against the real app: search (an email prefix or an exact id, role, status,
tenant), creating a user with only the roles the viewer may give, a user's balance, role, freeze and unfreeze, a
new password and signing out everywhere, all through the services the /admin/v1/users routes call."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint.users.orm import Role, User
from tests.factories import create_tenant, create_user, fund
from tests.platform.auth_helpers import login
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post, htmx_get, row_ids


def _listed_ids(html: str) -> list[int]:
    return row_ids(html, "data-user-id")


def _offered_roles(html: str) -> set[str]:
    form = html[html.index('name="role"') :]
    return set(re.findall(r'<option value="([a-z_]+)"', form[: form.index("</select>")]))


def test_search_by_email_prefix_id_role_status_and_tenant(console_user: MakeConsoleUser, session: Session) -> None:
    operator = console_user(Role.operator)
    one, two = create_tenant(session), create_tenant(session)
    ann = create_user(session, tenant=one, role=Role.tenant_admin, email="ann.admin@one.test")
    bob = create_user(session, tenant=one, email="bob@one.test")
    amy = create_user(session, tenant=two, email="amy_x@two.test")

    def ids(**params: str | int) -> list[int]:
        page = operator.client.get("/admin/users", params=params)
        assert page.status_code == 200
        return _listed_ids(page.text)

    assert ids(q="A") == [amy.id, ann.id]  # a prefix, case-folded
    assert ids(q="ann.admin@one.test") == [ann.id]
    assert ids(q="one.test") == []  # a prefix, not a substring
    assert ids(q="a%") == []
    assert ids(q="amy_") == [amy.id]
    assert ids(q=str(bob.id)) == [bob.id]
    assert ids(q="a", role="tenant_admin") == [ann.id]
    assert ids(tenant_id=one.id) == [bob.id, ann.id]
    console_post(operator.client, f"/admin/users/{bob.id}/freeze", operator.csrf)
    assert ids(status="frozen") == [bob.id]
    assert _listed_ids(htmx_get(operator.client, "/admin/users", params={"q": "bob"}).text) == [bob.id]


def test_a_tenant_admin_searches_only_its_tenant(console_user: MakeConsoleUser, session: Session) -> None:
    mine, theirs = create_tenant(session), create_tenant(session)
    admin = console_user(Role.tenant_admin, tenant=mine)
    member = create_user(session, tenant=mine)
    stranger = create_user(session, tenant=theirs)
    assert set(_listed_ids(admin.client.get("/admin/users").text)) == {admin.user.id, member.id}
    assert _listed_ids(admin.client.get("/admin/users", params={"q": str(stranger.id)}).text) == []
    assert admin.client.get("/admin/users", params={"tenant_id": theirs.id}).status_code == 404
    page = admin.client.get(f"/admin/users/{stranger.id}")
    assert page.status_code == 404
    assert 'data-code="user_not_found"' in page.text
    forged = console_post(admin.client, f"/admin/users/{stranger.id}/freeze", admin.csrf)
    assert forged.status_code == 404


def test_the_create_form_offers_only_the_roles_the_viewer_may_give(
    console_user: MakeConsoleUser, session: Session
) -> None:
    tenant = create_tenant(session)
    platform_admin = console_user(Role.platform_admin)
    operator = console_user(Role.operator)
    tenant_admin = console_user(Role.tenant_admin, tenant=tenant)
    assert _offered_roles(platform_admin.client.get("/admin/users/new").text) == {r.value for r in Role}
    assert _offered_roles(operator.client.get("/admin/users/new").text) == {"tenant_admin", "member"}
    assert _offered_roles(tenant_admin.client.get("/admin/users/new").text) == {"tenant_admin", "member"}
    # A forged role is refused by the service, as the API refuses it.
    forged = console_post(operator.client, "/admin/users", operator.csrf, {"email": "ops2@x.test", "role": "operator"})
    assert forged.status_code == 403
    assert 'data-code="platform_admin_only"' in forged.text
    finance = console_user(Role.finance)
    assert finance.client.get("/admin/users/new").status_code == 403


def test_create_a_user_then_change_its_role_freeze_it_and_set_its_password(
    console_user: MakeConsoleUser, session: Session, client: TestClient
) -> None:
    tenant = create_tenant(session)
    admin = console_user(Role.tenant_admin, tenant=tenant)
    form = {"email": "New.Member@Acme.test", "name": "New", "role": "member", "password": "first-password-1"}
    created = console_post(admin.client, "/admin/users", admin.csrf, form)
    assert created.status_code == 303
    user = session.scalars(select(User).where(User.email == "new.member@acme.test")).one()
    assert (user.tenant_id, user.role) == (tenant.id, "member")
    assert created.headers["location"] == f"/admin/users/{user.id}?created=1"
    fund(session, account_id=user.account_id, amount=42)
    page = admin.client.get(created.headers["location"]).text
    assert "User created." in page
    assert '<span class="num">42</span>' in page
    assert login(client, user.email, "first-password-1").status_code == 200

    base = f"/admin/users/{user.id}"
    differ = console_post(
        admin.client, f"{base}/password", admin.csrf, {"password": "second-pass-2", "password_confirm": "other-pass"}
    )
    assert differ.status_code == 422
    short = console_post(admin.client, f"{base}/password", admin.csrf, {"password": "x", "password_confirm": "x"})
    assert short.status_code == 422
    same = {"password": "second-pass-2", "password_confirm": "second-pass-2"}
    assert console_post(admin.client, f"{base}/password", admin.csrf, same).status_code == 303
    assert login(client, user.email, "first-password-1").status_code == 401
    assert login(client, user.email, "second-pass-2").status_code == 200

    version = user.credentials_version
    assert console_post(admin.client, f"{base}/revoke-sessions", admin.csrf).status_code == 303
    session.expire_all()
    assert user.credentials_version > version
    assert console_post(admin.client, f"{base}/freeze", admin.csrf).status_code == 303
    session.expire_all()
    assert user.status == "frozen"
    assert "/unfreeze" in admin.client.get(base).text
    assert console_post(admin.client, f"{base}/unfreeze", admin.csrf).status_code == 303
    session.expire_all()
    assert user.status == "active"
    assert console_post(admin.client, f"{base}/role", admin.csrf, {"role": "tenant_admin"}).status_code == 303
    session.expire_all()
    assert user.role == "tenant_admin"
    # A peer tenant admin is beyond what a tenant admin manages: no controls, and the service refuses a post.
    assert 'id="manage"' not in admin.client.get(base).text
    assert console_post(admin.client, f"{base}/freeze", admin.csrf).status_code == 403


def test_no_one_changes_its_own_role_or_freezes_itself(console_user: MakeConsoleUser) -> None:
    operator = console_user(Role.operator)
    page = operator.client.get(f"/admin/users/{operator.user.id}").text
    assert "/role" not in page
    assert "/freeze" not in page
    refused = console_post(operator.client, f"/admin/users/{operator.user.id}/freeze", operator.csrf)
    assert refused.status_code == 403


def test_finance_reads_users_but_changes_nothing(console_user: MakeConsoleUser, session: Session) -> None:
    finance = console_user(Role.finance)
    member = create_user(session)
    page = finance.client.get(f"/admin/users/{member.id}")
    assert page.status_code == 200
    assert 'id="manage"' not in page.text
    assert "New user" not in page.text
    for action in ("freeze", "revoke-sessions", "password", "role"):
        forged = console_post(finance.client, f"/admin/users/{member.id}/{action}", finance.csrf, {"role": "x"})
        assert forged.status_code == 403, action
        assert 'data-code="insufficient_scope"' in forged.text, action
    session.expire_all()
    assert member.status == "active"
