"""Access tokens die with the credentials behind them: a password change, role change, freeze, tenant suspension,
password reset from the command line or an explicit revocation makes every earlier token fail (401) on its next
request. API keys are separate credentials and keep working."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from facemint.tenants.orm import Tenant
from facemint.users import service as user_service
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user
from tests.platform.auth_helpers import problem, sign_in, works
from tests.platform.conftest import Caller, MakeCaller

NEW_PASSWORD = "a-brand-new-password"


def assert_dead(client: TestClient, headers: dict[str, str]) -> None:
    problem(client.get("/v1/balance", headers=headers), 401, "unauthorized")


class TestTokensDieWithTheirCredentials:
    def test_a_password_change(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        staff = make_caller(Role.platform_admin)
        member = create_user(session)
        old = sign_in(client, member.email)
        response = client.patch(f"/admin/v1/users/{member.id}", json={"password": NEW_PASSWORD}, headers=staff.headers)
        assert response.status_code == 200, response.text
        assert_dead(client, old)
        assert works(client, sign_in(client, member.email, NEW_PASSWORD))

    def test_a_users_own_password_change_ends_its_other_sessions(self, client: TestClient, session: Session) -> None:
        admin = create_user(session, role=Role.tenant_admin)
        laptop, phone = sign_in(client, admin.email), sign_in(client, admin.email)
        response = client.patch(f"/admin/v1/users/{admin.id}", json={"password": NEW_PASSWORD}, headers=laptop)
        assert response.status_code == 200, response.text
        assert_dead(client, phone)
        assert_dead(client, laptop)

    def test_a_role_change(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        staff = make_caller(Role.platform_admin)
        admin = create_user(session, role=Role.tenant_admin)
        old = sign_in(client, admin.email)
        assert client.get("/admin/v1/users", headers=old).status_code == 200
        response = client.patch(f"/admin/v1/users/{admin.id}", json={"role": "member"}, headers=staff.headers)
        assert response.status_code == 200, response.text
        assert_dead(client, old)
        new = sign_in(client, admin.email)
        problem(client.get("/admin/v1/users", headers=new), 403, "insufficient_scope")

    def test_a_freeze_even_after_an_unfreeze(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        staff = make_caller(Role.platform_admin)
        member = create_user(session)
        old = sign_in(client, member.email)
        assert client.post(f"/admin/v1/users/{member.id}/freeze", headers=staff.headers).status_code == 200
        assert_dead(client, old)
        assert client.post(f"/admin/v1/users/{member.id}/unfreeze", headers=staff.headers).status_code == 200
        assert_dead(client, old)
        assert works(client, sign_in(client, member.email))

    def test_a_tenant_suspension_ends_every_session_of_the_tenant(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        staff = make_caller(Role.platform_admin)
        tenant, other_tenant = create_tenant(session), create_tenant(session)
        users = [create_user(session, tenant=tenant, role=role) for role in (Role.tenant_admin, Role.member)]
        outsider = create_user(session, tenant=other_tenant)
        tokens = [sign_in(client, user.email) for user in users]
        outsider_token = sign_in(client, outsider.email)
        assert client.post(f"/admin/v1/tenants/{tenant.id}/suspend", headers=staff.headers).status_code == 200
        assert client.post(f"/admin/v1/tenants/{tenant.id}/activate", headers=staff.headers).status_code == 200
        for token in tokens:
            assert_dead(client, token)
        assert works(client, outsider_token)
        assert all(works(client, sign_in(client, user.email)) for user in users)

    def test_a_password_reset_from_the_command_line(self, client: TestClient, session: Session) -> None:
        admin = create_user(session, role=Role.platform_admin)
        old = sign_in(client, admin.email)
        user_service.bootstrap_admin(session, email=admin.email, password=NEW_PASSWORD)
        session.commit()
        assert_dead(client, old)
        assert works(client, sign_in(client, admin.email, NEW_PASSWORD))

    def test_a_rename_ends_nothing(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        staff = make_caller(Role.platform_admin)
        member = create_user(session)
        token = sign_in(client, member.email)
        assert (
            client.patch(f"/admin/v1/users/{member.id}", json={"name": "M"}, headers=staff.headers).status_code == 200
        )
        assert works(client, token)


class TestSigningOutEverywhere:
    def test_the_caller_revokes_its_own_sessions(self, client: TestClient, make_caller: MakeCaller) -> None:
        member = make_caller(Role.member)
        laptop, phone = sign_in(client, member.user.email), sign_in(client, member.user.email)
        response = client.post("/auth/revoke", headers=laptop)
        assert response.status_code == 204, response.text
        assert_dead(client, laptop)
        assert_dead(client, phone)
        assert works(client, member.headers)  # API keys are separate credentials
        # With a key of the user, too; the key itself survives.
        phone = sign_in(client, member.user.email)
        assert client.post("/auth/revoke", headers=member.headers).status_code == 204
        assert_dead(client, phone)
        assert works(client, member.headers)
        problem(client.post("/auth/revoke"), 401, "unauthorized")

    def test_an_admin_revokes_a_users_sessions(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        admin = make_caller(Role.tenant_admin)
        tenant = session.get_one(Tenant, admin.tenant_id)
        member = create_user(session, tenant=tenant)
        token = sign_in(client, member.email)
        response = client.post(f"/admin/v1/users/{member.id}/revoke-sessions", headers=admin.headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "active"
        assert_dead(client, token)
        events = client.get(
            "/admin/v1/audit-events", params={"action": "user.revoke_sessions"}, headers=admin.headers
        ).json()["items"]
        assert [(e["target_id"], e["actor_user_id"]) for e in events] == [(str(member.id), admin.id)]

    def test_revoking_sessions_follows_the_freeze_rules(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        admin = make_caller(Role.tenant_admin)
        peer = create_user(session, tenant=session.get_one(Tenant, admin.tenant_id), role=Role.tenant_admin)
        outsider = create_user(session)
        operator, staff_peer = make_caller(Role.operator), make_caller(Role.operator)
        platform_admin = create_user(session, role=Role.platform_admin)
        peer_token = sign_in(client, peer.email)

        def revoke(caller: Caller, user_id: int) -> int:
            return client.post(f"/admin/v1/users/{user_id}/revoke-sessions", headers=caller.headers).status_code

        assert revoke(admin, peer.id) == 403  # a tenant admin manages its members only
        assert revoke(admin, outsider.id) == 404  # another tenant's user does not exist for it
        assert works(client, peer_token)
        assert revoke(operator, staff_peer.id) == 200  # restricting a peer is an operator's to do
        assert revoke(operator, platform_admin.id) == 403
        member = make_caller(Role.member, session.get_one(Tenant, admin.tenant_id))
        problem(
            client.post(f"/admin/v1/users/{member.id}/revoke-sessions", headers=member.headers),
            403,
            "insufficient_scope",
        )
