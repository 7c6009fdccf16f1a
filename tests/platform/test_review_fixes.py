"""Regressions for defects found in review: privilege escalation, idempotency races, 500s on bad input."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from facemint.recharges import batch as recharge_batch
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import MakeCaller


class TestNobodyManagesAnyoneAboveThem:
    def test_an_operator_cannot_take_over_a_platform_admin(self, client: TestClient, make_caller: MakeCaller) -> None:
        operator, admin = make_caller(Role.operator), make_caller(Role.platform_admin)
        for response in (
            client.patch(
                f"/admin/v1/users/{admin.id}", json={"password": "operator-owns-you"}, headers=operator.headers
            ),
            client.patch(f"/admin/v1/users/{admin.id}", json={"name": "renamed"}, headers=operator.headers),
            client.post(f"/admin/v1/users/{admin.id}/freeze", headers=operator.headers),
            client.post(
                "/admin/v1/api-keys",
                json={"user_id": admin.id, "name": "x", "scopes": ["users:write"]},
                headers=operator.headers,
            ),
        ):
            assert response.status_code == 403, response.text
        admin_key = client.get("/admin/v1/api-keys", params={"user_id": admin.id}, headers=admin.headers)
        revoke = client.delete(f"/admin/v1/api-keys/{admin_key.json()['items'][0]['id']}", headers=operator.headers)
        assert revoke.status_code == 403
        assert client.get("/v1/balance", headers=admin.headers).status_code == 200  # the admin's key still works

    def test_an_operator_still_manages_tenant_users(self, client: TestClient, make_caller: MakeCaller) -> None:
        operator, member = make_caller(Role.operator), make_caller(Role.member)
        response = client.patch(f"/admin/v1/users/{member.id}", json={"name": "ok"}, headers=operator.headers)
        assert response.status_code == 200

    def test_a_tenant_admin_cannot_impersonate_a_peer(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        first = make_caller(Role.tenant_admin)
        tenant = session.get(Tenant, first.tenant_id)
        peer = make_caller(Role.tenant_admin, tenant=tenant)
        member = make_caller(Role.member, tenant=tenant)
        key_for_peer = client.post(
            "/admin/v1/api-keys",
            json={"user_id": peer.id, "name": "x", "scopes": ["users:write"]},
            headers=first.headers,
        )
        assert key_for_peer.status_code == 403
        assert (
            client.patch(
                f"/admin/v1/users/{peer.id}", json={"password": "takeover-peer"}, headers=first.headers
            ).status_code
            == 403
        )
        # Its own members and itself stay manageable.
        assert (
            client.patch(f"/admin/v1/users/{member.id}", json={"name": "m"}, headers=first.headers).status_code == 200
        )
        assert (
            client.patch(f"/admin/v1/users/{first.id}", json={"name": "me"}, headers=first.headers).status_code == 200
        )
        own_role = client.patch(f"/admin/v1/users/{first.id}", json={"role": "member"}, headers=first.headers)
        assert own_role.status_code == 403


class TestIdempotencyRaces:
    def test_a_duplicate_batch_replays_instead_of_failing_on_the_drained_pool(
        self, app: FastAPI, session: Session, make_caller: MakeCaller, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        tenant = create_tenant(session)
        fund(session, account_id=tenant.pool_account_id, amount=10)
        admin = make_caller(Role.tenant_admin, tenant=tenant)
        user = create_user(session, tenant=tenant)
        # Hold the first request between claiming its key and applying, until the second one is under way.
        second_started = threading.Event()
        real_resolve = recharge_batch._resolve_rows

        def slow_resolve(*args: object, **kwargs: object) -> object:
            second_started.wait(timeout=5)
            return real_resolve(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(recharge_batch, "_resolve_rows", slow_resolve)
        body = f"email,amount\n{user.email},10\n"
        headers = {**admin.headers, "Idempotency-Key": "same", "Content-Type": "text/csv"}

        def send(i: int) -> tuple[int, bool]:
            client = TestClient(app)  # no lifespan: its shutdown would close the shared engine
            if i == 1:
                second_started.set()
            response = client.post("/admin/v1/recharges/batch", params={"reason": "r"}, content=body, headers=headers)
            return response.status_code, response.headers.get("Idempotent-Replayed") == "true"

        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(send, 0)
            second = pool.submit(send, 1)
            outcomes = sorted([first.result(), second.result()])
        assert outcomes == [(200, True), (201, False)]

    def test_concurrent_reversals_of_one_transaction_apply_once(
        self, app: FastAPI, session: Session, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        member = create_user(session)
        txn = fund(session, account_id=member.account_id, amount=20)
        barrier = threading.Barrier(4)

        def reverse(i: int) -> int:
            client = TestClient(app)  # no lifespan: its shutdown would close the shared engine
            barrier.wait()
            return client.post(
                f"/admin/v1/transactions/{txn}/reversal",
                json={"reason": "undo"},
                headers={**operator.headers, "Idempotency-Key": f"rev-{i}"},
            ).status_code

        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = sorted(pool.map(reverse, range(4)))
        assert statuses == [201, 409, 409, 409]

    def test_concurrent_creates_of_one_email_or_tenant_name_answer_409(
        self, app: FastAPI, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        tenant_id = (
            TestClient(app).post("/admin/v1/tenants", json={"name": "base"}, headers=operator.headers).json()["id"]
        )
        barrier = threading.Barrier(6)

        def create(kind: str) -> int:
            client = TestClient(app)  # no lifespan: its shutdown would close the shared engine
            barrier.wait()
            if kind == "user":
                body = {"email": "same@example.test", "tenant_id": tenant_id}
                return client.post("/admin/v1/users", json=body, headers=operator.headers).status_code
            return client.post("/admin/v1/tenants", json={"name": "same"}, headers=operator.headers).status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(create, ["user"] * 3 + ["tenant"] * 3))
        assert sorted(statuses[:3]) == [201, 409, 409]
        assert sorted(statuses[3:]) == [201, 409, 409]


class TestBadInputIsAClear4xx:
    @pytest.mark.parametrize(
        ("method", "path", "kwargs"),
        [
            ("POST", "/auth/token", {"json": {"email": "a\u0000@b.co", "password": "x"}}),
            ("GET", "/admin/v1/users", {"params": {"email": "a\u0000b"}}),
            ("GET", "/admin/v1/tenants", {"params": {"name": "a\u0000b"}}),
            ("GET", "/admin/v1/users/9223372036854775808", {}),
            ("GET", "/admin/v1/recharges/batches", {"params": {"tenant_id": str(2**63)}}),
            ("POST", "/admin/v1/tenants", {"json": {"name": "nul\u0000name"}}),
        ],
    )
    def test_values_the_database_refuses(
        self, client: TestClient, make_caller: MakeCaller, method: str, path: str, kwargs: dict
    ) -> None:
        operator = make_caller(Role.operator)
        response = client.request(method, path, headers=operator.headers, **kwargs)
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == "application/problem+json"

    def test_json_batch_with_a_nul_or_a_lone_surrogate_or_deep_nesting(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        headers = {**operator.headers, "Content-Type": "application/json"}
        bodies = [
            '{"reason": "r", "items": [{"email": "a@b.co", "amount": 1, "reference": "x\\u0000y"}]}',
            '{"reason": "r", "items": [{"email": "a@b.co", "amount": 1, "reference": "\\ud800"}]}',
            '{"reason": "r", "items": ' + "[" * 5000 + "]" * 5000 + "}",
        ]
        for i, body in enumerate(bodies):
            response = client.post(
                "/admin/v1/recharges/batch", content=body, headers={**headers, "Idempotency-Key": f"bad-{i}"}
            )
            assert 400 <= response.status_code < 500, response.text
            if i < 2:  # a bad row, not a bad document: reported with its row number, nothing applied
                assert response.json()["code"] == "batch_rejected"
                assert response.json()["failed"][0]["code"] == "malformed_row"

    def test_adjustments_are_bounded(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        operator = make_caller(Role.operator)
        member = create_user(session)
        for amount in (2**62, -(2**62), 2**63):
            response = client.post(
                "/admin/v1/adjustments",
                json={"user_id": member.id, "amount": amount, "reason": "x"},
                headers={**operator.headers, "Idempotency-Key": f"adj-{amount}"},
            )
            assert response.status_code == 422, response.text


class TestFailedAuthentication:
    def test_an_exhausted_address_refuses_failures_but_not_a_valid_key(
        self, session: Session, database_url: str, redis_url: str, make_caller: MakeCaller
    ) -> None:
        from facemint.app import create_app
        from tests.conftest import make_settings

        app = create_app(make_settings(database_url, redis_url, anonymous_limit_per_ip="3/minute"))
        member = make_caller(Role.member)
        with TestClient(app) as client:
            bad = {"Authorization": "Bearer fmk_notarealkeyatall"}
            statuses = [client.get("/v1/balance", headers=bad).status_code for _ in range(4)]
            assert statuses == [401, 401, 401, 429]
            # Other clients' failures at this address never lock out a valid key (tests/platform/test_lockout.py).
            assert client.get("/v1/balance", headers=member.headers).status_code == 200


def test_a_narrow_key_cannot_widen_itself_through_its_users_password(
    client: TestClient, session: Session, make_caller: MakeCaller
) -> None:
    from facemint.auth.scopes import Scope

    admin = make_caller(Role.tenant_admin, scopes=[Scope.users_write, Scope.users_read])
    response = client.patch(
        f"/admin/v1/users/{admin.id}", json={"password": "now-i-own-the-role"}, headers=admin.headers
    )
    assert response.status_code == 403
    assert client.patch(f"/admin/v1/users/{admin.id}", json={"name": "ok"}, headers=admin.headers).status_code == 200
