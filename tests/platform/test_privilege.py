"""Privilege never grows: creating a user, giving it a role, a password, an unfreeze or an API key needs the caller
to hold every scope that results; operator and finance accounts get privilege from platform admins only."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.auth.scopes import Scope
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user
from tests.platform.auth_helpers import login, problem, sign_in, works
from tests.platform.conftest import MakeCaller

NEW_PASSWORD = "a-brand-new-password"


def user_count(session: Session, email: str) -> int:
    return int(session.execute(text("SELECT count(*) FROM users WHERE email = :e"), {"e": email}).scalar_one())


class TestANarrowKeyCannotMintAWiderUser:
    def test_a_users_write_key_cannot_create_a_tenant_admin_and_sign_in_as_it(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        # The issue's scenario: a tenant admin's key holding only users:write.
        narrow = make_caller(Role.tenant_admin, scopes=[Scope.users_write])
        body = {"email": "shadow@example.test", "role": "tenant_admin", "password": NEW_PASSWORD}
        refused = problem(client.post("/admin/v1/users", json=body, headers=narrow.headers), 403, "privilege_not_held")
        assert "webhooks:write" in refused["missing"]
        assert user_count(session, "shadow@example.test") == 0
        problem(login(client, "shadow@example.test", NEW_PASSWORD), 401, "unauthorized")
        # Nor a member: its /v1 scopes are not the key's either.
        member = {"email": "m@example.test", "role": "member"}
        problem(client.post("/admin/v1/users", json=member, headers=narrow.headers), 403, "privilege_not_held")
        # The same tenant admin with its full role still does both.
        full = make_caller(Role.tenant_admin, session.get_one(Tenant, narrow.tenant_id))
        assert client.post("/admin/v1/users", json=body, headers=full.headers).status_code == 201
        assert client.post("/admin/v1/users", json=member, headers=full.headers).status_code == 201

    def test_a_narrow_key_cannot_promote_or_set_a_password(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        narrow = make_caller(Role.tenant_admin, scopes=[Scope.users_write, Scope.users_read])
        member = create_user(session, tenant=session.get_one(Tenant, narrow.tenant_id))
        for change in ({"role": "tenant_admin"}, {"password": NEW_PASSWORD}):
            response = client.patch(f"/admin/v1/users/{member.id}", json=change, headers=narrow.headers)
            problem(response, 403, "privilege_not_held")
        problem(login(client, member.email, NEW_PASSWORD), 401)
        user = client.get(f"/admin/v1/users/{member.id}", headers=narrow.headers).json()
        assert user["role"] == "member"
        # A new name grants nothing.
        assert (
            client.patch(f"/admin/v1/users/{member.id}", json={"name": "M"}, headers=narrow.headers).status_code == 200
        )

    def test_a_narrow_key_may_freeze_but_not_unfreeze(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        narrow = make_caller(Role.tenant_admin, scopes=[Scope.users_write])
        member = create_user(session, tenant=session.get_one(Tenant, narrow.tenant_id))
        assert client.post(f"/admin/v1/users/{member.id}/freeze", headers=narrow.headers).status_code == 200
        problem(client.post(f"/admin/v1/users/{member.id}/unfreeze", headers=narrow.headers), 403, "privilege_not_held")
        problem(login(client, member.email), 403, "user_frozen")

    def test_a_key_is_never_issued_beyond_the_callers_scopes(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        narrow = make_caller(Role.tenant_admin, scopes=[Scope.api_keys_write, Scope.balance_read])
        member = create_user(session, tenant=session.get_one(Tenant, narrow.tenant_id))

        def issue(scopes: list[str]) -> object:
            body = {"user_id": member.id, "name": "k", "scopes": scopes}
            return client.post("/admin/v1/api-keys", json=body, headers=narrow.headers)

        body = problem(issue(["swaps:write"]), 422, "scope_not_allowed")
        assert body["scopes"] == ["swaps:write"]
        assert issue(["balance:read"]).status_code == 201  # held by the caller and the member


class TestOperatorAndFinanceAccountsComeFromPlatformAdmins:
    def test_an_operator_cannot_create_another_operator_or_finance(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        # The issue's scenario: operator A makes operator B, who signs in and approves A's held recharge.
        operator = make_caller(Role.operator)
        for role in ("operator", "finance"):
            body = {"email": f"second-{role}@example.test", "role": role, "password": NEW_PASSWORD}
            problem(client.post("/admin/v1/users", json=body, headers=operator.headers), 403, "platform_admin_only")
            assert user_count(session, body["email"]) == 0
            problem(login(client, body["email"], NEW_PASSWORD), 401)
        admin = make_caller(Role.platform_admin)
        body = {"email": "second-operator@example.test", "role": "operator", "password": NEW_PASSWORD}
        assert client.post("/admin/v1/users", json=body, headers=admin.headers).status_code == 201

    def test_an_operator_cannot_give_another_staff_account_privilege(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        peer = make_caller(Role.operator)
        finance = make_caller(Role.finance)
        h = operator.headers
        for response in (
            client.patch(f"/admin/v1/users/{peer.id}", json={"password": NEW_PASSWORD}, headers=h),
            client.patch(f"/admin/v1/users/{finance.id}", json={"password": NEW_PASSWORD}, headers=h),
            client.patch(f"/admin/v1/users/{finance.id}", json={"role": "operator"}, headers=h),
            client.patch(f"/admin/v1/users/{peer.id}", json={"role": "finance"}, headers=h),
            client.post(
                "/admin/v1/api-keys", json={"user_id": peer.id, "name": "x", "scopes": ["users:read"]}, headers=h
            ),
            client.post(
                "/admin/v1/api-keys", json={"user_id": finance.id, "name": "x", "scopes": ["users:read"]}, headers=h
            ),
        ):
            problem(response, 403, "platform_admin_only")
        problem(login(client, peer.user.email, NEW_PASSWORD), 401)
        assert client.get(f"/admin/v1/users/{finance.id}", headers=h).json()["role"] == "finance"

    def test_an_operator_may_freeze_another_staff_account_but_not_unfreeze_it(
        self, client: TestClient, make_caller: MakeCaller
    ) -> None:
        operator, peer, admin = make_caller(Role.operator), make_caller(Role.operator), make_caller(Role.platform_admin)
        # Freezing and revoking only take privilege away: an operator can stop a compromised peer at once.
        assert client.post(f"/admin/v1/users/{peer.id}/freeze", headers=operator.headers).status_code == 200
        assert not works(client, peer.headers)
        response = client.post(f"/admin/v1/users/{peer.id}/unfreeze", headers=operator.headers)
        problem(response, 403, "platform_admin_only")
        assert client.post(f"/admin/v1/users/{peer.id}/unfreeze", headers=admin.headers).status_code == 200
        [key] = client.get("/admin/v1/api-keys", params={"user_id": peer.id}, headers=admin.headers).json()["items"]
        assert client.delete(f"/admin/v1/api-keys/{key['id']}", headers=operator.headers).status_code == 200
        assert not works(client, peer.headers)

    def test_staff_still_manage_their_own_credentials_and_tenant_users(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        own_key = {"user_id": operator.id, "name": "ci", "scopes": ["recharges:write"]}
        assert client.post("/admin/v1/api-keys", json=own_key, headers=operator.headers).status_code == 201
        token = sign_in(client, operator.user.email)
        response = client.patch(f"/admin/v1/users/{operator.id}", json={"password": NEW_PASSWORD}, headers=token)
        assert response.status_code == 200, response.text
        assert works(client, sign_in(client, operator.user.email, NEW_PASSWORD))
        # Tenant users stay the operator's to manage, privilege included.
        member = create_user(session, tenant=create_tenant(session))
        promote = client.patch(f"/admin/v1/users/{member.id}", json={"role": "tenant_admin"}, headers=operator.headers)
        assert promote.status_code == 200, promote.text
