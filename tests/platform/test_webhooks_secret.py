"""The tenant's webhook signing secret over the admin API: who may read it, who may rotate it, and the audit."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint.audit.orm import AuditEvent
from facemint.users.orm import Role
from tests.factories import create_tenant
from tests.platform.conftest import MakeCaller
from tests.platform.webhook_helpers import tenant_secret


class TestSecretEndpoints:
    def test_tenant_admins_read_their_own_secret_only(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant, other = create_tenant(session), create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/webhook-secret", headers=admin.headers)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        secret = response.json()["secret"]
        assert secret == tenant_secret(session, tenant.id)
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32

        response = client.get(f"/admin/v1/tenants/{other.id}/webhook-secret", headers=admin.headers)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"
        assert tenant_secret(session, other.id) not in response.text

        member = make_caller(Role.member, tenant)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/webhook-secret", headers=member.headers)
        assert response.status_code == 403
        assert response.json()["code"] == "insufficient_scope"

    def test_operators_read_any_tenants_secret_and_finance_none(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        operator = make_caller(Role.operator)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/webhook-secret", headers=operator.headers)
        assert response.status_code == 200
        assert response.json()["secret"] == tenant_secret(session, tenant.id)
        response = client.get("/admin/v1/tenants/999999/webhook-secret", headers=operator.headers)
        assert response.status_code == 404
        # Finance reads everything else, but a signing secret would let it forge webhooks.
        finance = make_caller(Role.finance)
        response = client.get(f"/admin/v1/tenants/{tenant.id}/webhook-secret", headers=finance.headers)
        assert response.status_code == 403
        assert tenant_secret(session, tenant.id) not in response.text

    def test_rotation_replaces_the_secret_and_is_audited(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        before = tenant_secret(session, tenant.id)
        admin = make_caller(Role.platform_admin)
        response = client.post(f"/admin/v1/tenants/{tenant.id}/webhook-secret/rotate", headers=admin.headers)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        rotated = response.json()["secret"]
        assert rotated != before
        assert rotated == tenant_secret(session, tenant.id)
        assert len(base64.b64decode(rotated.removeprefix("whsec_"), validate=True)) == 32

        session.expire_all()
        [audit] = session.scalars(select(AuditEvent).where(AuditEvent.action == "tenant.webhook_secret.rotate")).all()
        assert (audit.tenant_id, audit.target_type, audit.target_id) == (tenant.id, "tenant", str(tenant.id))
        assert audit.actor_user_id == admin.id
        trail = json.dumps([audit.before, audit.after])
        assert before not in trail
        assert rotated not in trail
        assert audit.before != audit.after

        response = client.post("/admin/v1/tenants/999999/webhook-secret/rotate", headers=admin.headers)
        assert response.status_code == 404

    def test_rotation_needs_webhooks_write(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        tenant, other = create_tenant(session), create_tenant(session)
        before = tenant_secret(session, tenant.id)
        member = make_caller(Role.member, tenant)
        response = client.post(f"/admin/v1/tenants/{tenant.id}/webhook-secret/rotate", headers=member.headers)
        assert response.status_code == 403, response.text
        # A tenant admin rotates its own tenant's secret, and another tenant's answers 404.
        admin = make_caller(Role.tenant_admin, tenant)
        response = client.post(f"/admin/v1/tenants/{other.id}/webhook-secret/rotate", headers=admin.headers)
        assert response.status_code == 404, response.text
        response = client.post(f"/admin/v1/tenants/{tenant.id}/webhook-secret/rotate", headers=admin.headers)
        assert response.status_code == 200, response.text
        rotated = tenant_secret(session, tenant.id)
        assert rotated != before
        assert response.json()["secret"] == rotated
        before = rotated
        finance = make_caller(Role.finance)
        response = client.post(f"/admin/v1/tenants/{tenant.id}/webhook-secret/rotate", headers=finance.headers)
        assert response.status_code == 403
        assert tenant_secret(session, tenant.id) == before
