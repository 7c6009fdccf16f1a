"""The admin API end to end: tenants, users, balances, the caller's own ledger with cursor pagination, the audit
trail behind every write, and idempotent adjustments and reversals."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import Caller, MakeCaller


def problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    if code is not None:
        assert body["code"] == code, body
    return body


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def cursor_of(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def events(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    return list(ok(client.get("/admin/v1/audit-events", params=params, headers=headers))["items"])


@pytest.fixture
def staff(make_caller: MakeCaller) -> Caller:
    return make_caller(Role.platform_admin)


class TestTenants:
    def test_lifecycle(self, client: TestClient, session: Session, staff: Caller, make_caller: MakeCaller) -> None:
        h = staff.headers
        created = ok(client.post("/admin/v1/tenants", json={"name": "  Acme  ", "plan": "pro"}, headers=h), 201)
        assert (created["name"], created["plan"], created["status"]) == ("Acme", "pro", "active")
        assert "pool_account_id" not in created
        tid = created["id"]
        assert ok(client.get(f"/admin/v1/tenants/{tid}", headers=h)) == created
        updated = ok(client.patch(f"/admin/v1/tenants/{tid}", json={"name": "Acme Inc", "plan": "free"}, headers=h))
        assert (updated["name"], updated["plan"]) == ("Acme Inc", "free")
        member = make_caller(Role.member, session.get_one(Tenant, tid))
        assert client.get("/v1/balance", headers=member.headers).status_code == 200
        assert ok(client.post(f"/admin/v1/tenants/{tid}/suspend", headers=h))["status"] == "suspended"
        problem(client.get("/v1/balance", headers=member.headers), 403, "tenant_suspended")
        assert ok(client.post(f"/admin/v1/tenants/{tid}/activate", headers=h))["status"] == "active"
        assert client.get("/v1/balance", headers=member.headers).status_code == 200

    def test_list_and_filters(self, client: TestClient, staff: Caller) -> None:
        h = staff.headers
        for name, plan in [("alpha-one", "free"), ("alpha-two", "pro"), ("beta", "pro")]:
            ok(client.post("/admin/v1/tenants", json={"name": name, "plan": plan}, headers=h), 201)
        [beta] = ok(client.get("/admin/v1/tenants", params={"name": "BETA"}, headers=h))["items"]
        ok(client.post(f"/admin/v1/tenants/{beta['id']}/suspend", headers=h))

        def names(**params: Any) -> list[str]:
            return [t["name"] for t in ok(client.get("/admin/v1/tenants", params=params, headers=h))["items"]]

        assert names() == ["beta", "alpha-two", "alpha-one"]
        assert names(plan="pro") == ["beta", "alpha-two"]
        assert names(status="suspended") == ["beta"]
        assert names(name="alpha", plan="pro") == ["alpha-two"]
        assert names(name="%") == []
        page = ok(client.get("/admin/v1/tenants", params={"limit": 2}, headers=h))
        rest = ok(client.get("/admin/v1/tenants", params={"limit": 2, "cursor": page["next_cursor"]}, headers=h))
        assert [t["name"] for t in page["items"] + rest["items"]] == names()
        assert rest["next_cursor"] is None
        problem(client.get("/admin/v1/tenants", params={"plan": "gold"}, headers=h), 422, "validation_error")

    def test_refusals(self, client: TestClient, staff: Caller) -> None:
        h = staff.headers
        ok(client.post("/admin/v1/tenants", json={"name": "dup"}, headers=h), 201)
        problem(client.post("/admin/v1/tenants", json={"name": "dup"}, headers=h), 409, "tenant_exists")
        for body in ({"name": "   "}, {"name": "x", "plan": "gold"}, {"name": "x", "status": "active"}, {}):
            problem(client.post("/admin/v1/tenants", json=body, headers=h), 422, "validation_error")
        problem(client.get("/admin/v1/tenants/999999", headers=h), 404, "tenant_not_found")


class TestUsers:
    def test_lifecycle(self, client: TestClient, session: Session, staff: Caller) -> None:
        h, tenant = staff.headers, create_tenant(session)
        body = {"email": " Ann@Example.TEST ", "role": "member", "tenant_id": tenant.id, "password": "s3cret-pass"}
        user = ok(client.post("/admin/v1/users", json=body, headers=h), 201)
        assert (user["email"], user["role"], user["status"], user["tenant_id"]) == (
            "ann@example.test",
            "member",
            "active",
            tenant.id,
        )
        assert "password" not in json.dumps(user)
        uid = user["id"]

        def sign_in() -> dict[str, str]:
            token = ok(client.post("/auth/token", json={"email": "ann@example.test", "password": "s3cret-pass"}))
            return {"Authorization": f"Bearer {token['access_token']}"}

        auth = sign_in()
        assert ok(client.get(f"/admin/v1/users/{uid}", headers=h)) == user
        updated = ok(client.patch(f"/admin/v1/users/{uid}", json={"name": "Ann", "role": "tenant_admin"}, headers=h))
        assert (updated["name"], updated["role"]) == ("Ann", "tenant_admin")
        # A role change ends the sessions issued under the old role; the next one holds the new role.
        problem(client.get("/v1/balance", headers=auth), 401, "unauthorized")
        auth = sign_in()
        assert client.get("/admin/v1/users", headers=auth).status_code == 200
        assert ok(client.post(f"/admin/v1/users/{uid}/freeze", headers=h))["status"] == "frozen"
        problem(client.get("/v1/balance", headers=auth), 401, "unauthorized")
        problem(client.post("/auth/token", json={"email": "ann@example.test", "password": "s3cret-pass"}), 403)
        assert ok(client.post(f"/admin/v1/users/{uid}/unfreeze", headers=h))["status"] == "active"
        assert client.get("/v1/balance", headers=sign_in()).status_code == 200
        problem(client.post(f"/admin/v1/users/{staff.id}/freeze", headers=h), 403, "forbidden")

    def test_list_and_filters(self, client: TestClient, session: Session, staff: Caller) -> None:
        h = staff.headers
        t1, t2 = create_tenant(session), create_tenant(session)
        a = create_user(session, tenant=t1, role=Role.tenant_admin, email="a.admin@one.test")
        b = create_user(session, tenant=t1, role=Role.member, email="b.member@one.test")
        c = create_user(session, tenant=t2, role=Role.member, email="c.member@two.test")
        ok(client.post(f"/admin/v1/users/{b.id}/freeze", headers=h))

        def ids(**params: Any) -> list[int]:
            return [u["id"] for u in ok(client.get("/admin/v1/users", params=params, headers=h))["items"]]

        assert ids() == [c.id, b.id, a.id, staff.id]
        assert ids(tenant_id=t1.id) == [b.id, a.id]
        assert ids(role="member") == [c.id, b.id]
        assert ids(status="frozen") == [b.id]
        assert ids(email="MEMBER@") == [c.id, b.id]
        assert ids(email="@one", role="tenant_admin") == [a.id]
        assert ids(email="_") == []  # LIKE wildcards are matched literally
        # The index-backed search: emails that start with the prefix (case-folded), or exactly one id.
        assert ids(email_prefix="B.MEMBER") == [b.id]
        assert ids(email_prefix="member") == []
        assert ids(email_prefix="%") == []
        assert ids(user_id=a.id) == [a.id]
        assert ids(user_id=a.id, tenant_id=t2.id) == []

    def test_refusals(self, client: TestClient, session: Session, staff: Caller) -> None:
        h, tenant = staff.headers, create_tenant(session)
        existing = create_user(session, tenant=tenant)
        dup = {"email": existing.email.upper(), "tenant_id": tenant.id}
        problem(client.post("/admin/v1/users", json=dup, headers=h), 409, "email_taken")
        problem(client.post("/admin/v1/users", json={"email": "x@y.test"}, headers=h), 422, "unprocessable")
        staff_in_tenant = {"email": "ops@y.test", "role": "operator", "tenant_id": tenant.id}
        problem(client.post("/admin/v1/users", json=staff_in_tenant, headers=h), 422, "unprocessable")
        nowhere = {"email": "x@y.test", "tenant_id": 999999}
        problem(client.post("/admin/v1/users", json=nowhere, headers=h), 404, "tenant_not_found")
        for body in (
            {"email": "not-an-email", "tenant_id": tenant.id},
            {"email": "x@y.test", "tenant_id": tenant.id, "password": "short"},
            {"email": "x@y.test", "tenant_id": tenant.id, "status": "active"},
        ):
            problem(client.post("/admin/v1/users", json=body, headers=h), 422, "validation_error")
        to_staff = client.patch(f"/admin/v1/users/{existing.id}", json={"role": "finance"}, headers=h)
        problem(to_staff, 422, "unprocessable")
        problem(client.get("/admin/v1/users/999999", headers=h), 404, "user_not_found")


class TestBalances:
    def test_admin_balances_and_pool(self, client: TestClient, session: Session, staff: Caller) -> None:
        h, tenant = staff.headers, create_tenant(session)
        rich, poor = create_user(session, tenant=tenant), create_user(session, tenant=tenant)
        fund(session, account_id=rich.account_id, amount=70)
        fund(session, account_id=tenant.pool_account_id, amount=500)
        items = ok(client.get("/admin/v1/balances", params={"tenant_id": tenant.id}, headers=h))["items"]
        assert [(i["user_id"], i["balance"], i["available"], i["held"]) for i in items] == [
            (poor.id, 0, 0, 0),
            (rich.id, 70, 70, 0),
        ]
        assert items[1]["email"] == rich.email
        [only] = ok(client.get("/admin/v1/balances", params={"user_id": rich.id}, headers=h))["items"]
        assert only["account_id"] == rich.account_id
        pool = ok(client.get(f"/admin/v1/tenants/{tenant.id}/pool", headers=h))
        assert (pool["kind"], pool["balance"], pool["tenant_id"]) == ("tenant_pool", 500, tenant.id)
        page = ok(client.get("/admin/v1/balances", params={"tenant_id": tenant.id, "limit": 1}, headers=h))
        rest = ok(
            client.get("/admin/v1/balances", params={"tenant_id": tenant.id, "cursor": page["next_cursor"]}, headers=h)
        )
        assert [i["user_id"] for i in page["items"] + rest["items"]] == [poor.id, rich.id]

    def test_own_balance_and_ledger_pages(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        member = make_caller(Role.member)
        assert ok(client.get("/v1/balance", headers=member.headers)) == {
            "available": 0,
            "held": 0,
            "balance": 0,
            "lots": [],
            "next_expiry": None,
        }
        transactions = [fund(session, account_id=member.user.account_id, amount=n) for n in range(1, 8)]
        assert ok(client.get("/v1/balance", headers=member.headers))["balance"] == 28
        seen: list[dict[str, Any]] = []
        cursor, pages = None, 0
        while True:
            params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = ok(client.get("/v1/ledger", params=params, headers=member.headers))
            pages += 1
            assert len(page["items"]) <= 3
            seen += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        ids = [e["id"] for e in seen]
        assert ids == sorted(set(ids), reverse=True)  # newest first, no duplicates
        assert [e["transaction_id"] for e in seen] == transactions[::-1]  # no omissions
        assert [e["balance_after"] for e in seen] == [28, 21, 15, 10, 6, 3, 1]
        assert {e["kind"] for e in seen} == {"recharge"}

    @pytest.mark.parametrize("path", ["/v1/ledger", "/admin/v1/balances", "/admin/v1/users", "/admin/v1/audit-events"])
    def test_invalid_cursor(self, client: TestClient, staff: Caller, path: str) -> None:
        for cursor in [
            "not a cursor!",
            "%%%",
            base64.urlsafe_b64encode(b"not json").decode(),
            cursor_of([1, 2]),
            cursor_of({"after": 5}),
            cursor_of({"before": "5"}),
            cursor_of({"before": 0}),
            cursor_of({"before": -3}),
            cursor_of({"before": 1.5}),
            cursor_of({"before": True}),
            cursor_of({"before": 10**30}),
        ]:
            response = client.get(path, params={"cursor": cursor}, headers=staff.headers)
            problem(response, 422, "invalid_cursor")
        for limit in (0, 201, "many"):
            problem(client.get(path, params={"limit": limit}, headers=staff.headers), 422, "validation_error")


class TestAuditTrail:
    def test_every_admin_write_is_recorded(
        self, client: TestClient, session: Session, staff: Caller, make_caller: MakeCaller
    ) -> None:
        h = staff.headers
        ids = iter(f"req-{n}" for n in range(100))

        def write(method: str, path: str, body: Any = None, **extra: str) -> tuple[Any, str]:
            request_id = next(ids)
            response = client.request(method, path, json=body, headers={**h, "X-Request-ID": request_id, **extra})
            assert response.status_code in (200, 201), response.text
            assert response.headers["x-request-id"] == request_id
            return response.json(), request_id

        tenant, rid = write("POST", "/admin/v1/tenants", {"name": "audited"})
        tid = tenant["id"]
        expected = [("tenant.create", "tenant", tid, rid, None, {"name": "audited", "plan": "free"})]
        _, rid = write("PATCH", f"/admin/v1/tenants/{tid}", {"plan": "pro"})
        expected.append(("tenant.update", "tenant", tid, rid, {"plan": "free"}, {"plan": "pro"}))
        _, rid = write("POST", f"/admin/v1/tenants/{tid}/suspend")
        expected.append(("tenant.suspend", "tenant", tid, rid, {"status": "active"}, {"status": "suspended"}))
        _, rid = write("POST", f"/admin/v1/tenants/{tid}/activate")
        expected.append(("tenant.activate", "tenant", tid, rid, {"status": "suspended"}, {"status": "active"}))
        user, rid = write("POST", "/admin/v1/users", {"email": "au@example.test", "tenant_id": tid})
        uid = user["id"]
        expected.append(("user.create", "user", uid, rid, None, {"email": "au@example.test", "role": "member"}))
        _, rid = write("PATCH", f"/admin/v1/users/{uid}", {"name": "Au"})
        expected.append(("user.update", "user", uid, rid, {"name": None}, {"name": "Au"}))
        _, rid = write("POST", f"/admin/v1/users/{uid}/freeze")
        expected.append(("user.freeze", "user", uid, rid, {"status": "active"}, {"status": "frozen"}))
        _, rid = write("POST", f"/admin/v1/users/{uid}/unfreeze")
        expected.append(("user.unfreeze", "user", uid, rid, {"status": "frozen"}, {"status": "active"}))
        key, rid = write("POST", "/admin/v1/api-keys", {"user_id": uid, "name": "k", "scopes": ["balance:read"]})
        expected.append(("api_key.create", "api_key", key["id"], rid, None, {"scopes": ["balance:read"]}))
        _, rid = write("DELETE", f"/admin/v1/api-keys/{key['id']}")
        expected.append(("api_key.revoke", "api_key", key["id"], rid, {"revoked_at": None}, {"name": "k"}))
        adjustment = {"user_id": uid, "amount": 40, "reason": "goodwill"}
        posting, rid = write("POST", "/admin/v1/adjustments", adjustment, **{"Idempotency-Key": "adj-1"})
        txn = posting["transaction_id"]
        expected.append(("ledger.adjust", "ledger_transaction", txn, rid, None, {"amount": 40, "user_id": uid}))
        reversal, rid = write(
            "POST", f"/admin/v1/transactions/{txn}/reversal", {"reason": "oops"}, **{"Idempotency-Key": "rev-1"}
        )
        expected.append(
            (
                "ledger.reverse",
                "ledger_transaction",
                reversal["transaction_id"],
                rid,
                None,
                {"reverses_transaction_id": txn},
            )
        )

        recorded = {e["request_id"]: e for e in events(client, h, actor_user_id=staff.id, limit=200)}
        assert len(recorded) == len(expected)
        for action, target_type, target_id, request_id, before, after in expected:
            event = recorded[request_id]
            assert (event["action"], event["target_type"], event["target_id"]) == (action, target_type, str(target_id))
            assert event["actor_user_id"] == staff.id
            assert event["actor_api_key_id"] is not None
            assert event["tenant_id"] == tid, action
            if before is None:
                assert event["before"] is None, action
            else:
                assert before.items() <= event["before"].items(), (action, event["before"])
            assert after.items() <= event["after"].items(), (action, event["after"])
        # A tenant admin of that tenant sees its whole trail, money movements included.
        tenant_admin = make_caller(Role.tenant_admin, session.get_one(Tenant, tid))
        seen = {e["request_id"] for e in events(client, tenant_admin.headers, limit=200)}
        assert set(recorded) <= seen

    def test_request_id_is_generated_when_missing_or_unsafe(self, client: TestClient, staff: Caller) -> None:
        for n, given in enumerate((None, "has spaces", "x" * 200, "semi;colon")):
            headers = staff.headers | ({"X-Request-ID": given} if given else {})
            response = client.post("/admin/v1/tenants", json={"name": f"t-{n}"}, headers=headers)
            assert response.status_code == 201, response.text
            request_id = response.headers["x-request-id"]
            assert request_id != given
            assert len(request_id) == 32
            [event] = events(client, staff.headers, target_id=str(response.json()["id"]), target_type="tenant")
            assert event["request_id"] == request_id

    def test_the_callers_address_is_recorded(self, app: FastAPI, staff: Caller) -> None:
        with TestClient(app, client=("203.0.113.5", 40000)) as remote:
            created = ok(remote.post("/admin/v1/tenants", json={"name": "remote"}, headers=staff.headers), 201)
            [event] = events(remote, staff.headers, target_type="tenant", target_id=str(created["id"]))
        assert event["ip"] == "203.0.113.5"

    def test_filters(self, client: TestClient, staff: Caller) -> None:
        h = staff.headers
        t1 = ok(client.post("/admin/v1/tenants", json={"name": "f1"}, headers=h), 201)
        t2 = ok(client.post("/admin/v1/tenants", json={"name": "f2"}, headers=h), 201)
        ok(client.post(f"/admin/v1/tenants/{t2['id']}/suspend", headers=h))
        assert [e["target_id"] for e in events(client, h, action="tenant.create")] == [str(t2["id"]), str(t1["id"])]
        assert [e["action"] for e in events(client, h, tenant_id=t2["id"])] == ["tenant.suspend", "tenant.create"]
        assert [e["action"] for e in events(client, h, target_type="tenant", target_id=str(t1["id"]))] == [
            "tenant.create"
        ]
        assert events(client, h, actor_user_id=staff.id + 1000) == []


class TestAdjustmentsAndReversals:
    @pytest.fixture
    def member(self, make_caller: MakeCaller) -> Caller:
        return make_caller(Role.member)

    def balance(self, client: TestClient, member: Caller) -> int:
        return int(ok(client.get("/v1/balance", headers=member.headers))["balance"])

    def test_adjustment_is_idempotent(self, client: TestClient, staff: Caller, member: Caller) -> None:
        body = {"user_id": member.id, "amount": 25, "reason": "goodwill"}
        headers = {**staff.headers, "Idempotency-Key": "adj-key"}
        first = client.post("/admin/v1/adjustments", json=body, headers=headers)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        assert (first.json()["amount"], first.json()["kind"], first.json()["replayed"]) == (25, "adjustment", False)
        replay = client.post("/admin/v1/adjustments", json=body, headers=headers)
        assert replay.status_code == 200, replay.text
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["transaction_id"] == first.json()["transaction_id"]
        assert replay.json()["replayed"] is True
        assert self.balance(client, member) == 25
        changed = client.post("/admin/v1/adjustments", json={**body, "amount": 26}, headers=headers)
        problem(changed, 409, "idempotency_key_reused")
        assert self.balance(client, member) == 25
        assert len(events(client, staff.headers, action="ledger.adjust")) == 1
        debit = {"user_id": member.id, "amount": -10, "reason": "clawback"}
        ok(client.post("/admin/v1/adjustments", json=debit, headers={**staff.headers, "Idempotency-Key": "d"}), 201)
        assert self.balance(client, member) == 15

    def test_adjustment_refusals(self, client: TestClient, staff: Caller, member: Caller) -> None:
        body = {"user_id": member.id, "amount": 5, "reason": "x"}
        problem(client.post("/admin/v1/adjustments", json=body, headers=staff.headers), 400, "idempotency_key_required")
        blank = {**staff.headers, "Idempotency-Key": "   "}
        problem(client.post("/admin/v1/adjustments", json=body, headers=blank), 400, "idempotency_key_required")
        too_long = {**staff.headers, "Idempotency-Key": "k" * 256}
        problem(client.post("/admin/v1/adjustments", json=body, headers=too_long), 400, "invalid_idempotency_key")
        h = {**staff.headers, "Idempotency-Key": "refused"}
        overdraw = {**body, "amount": -1}
        problem(client.post("/admin/v1/adjustments", json=overdraw, headers=h), 402, "insufficient_tokens")
        problem(client.post("/admin/v1/adjustments", json={**body, "amount": 0}, headers=h), 422, "invalid_amount")
        for bad in ({"reason": " "}, {"amount": True}, {"amount": "5"}, {"amount": 5.0}, {"user_id": 0}):
            problem(client.post("/admin/v1/adjustments", json={**body, **bad}, headers=h), 422, "validation_error")
        nobody = {**body, "user_id": 999999}
        problem(client.post("/admin/v1/adjustments", json=nobody, headers=h), 404, "user_not_found")
        assert self.balance(client, member) == 0

    def test_reversal_is_idempotent_and_once_only(self, client: TestClient, staff: Caller, member: Caller) -> None:
        h = staff.headers
        credit = {"user_id": member.id, "amount": 50, "reason": "by mistake"}
        txn = ok(client.post("/admin/v1/adjustments", json=credit, headers={**h, "Idempotency-Key": "c"}), 201)
        path = f"/admin/v1/transactions/{txn['transaction_id']}/reversal"
        problem(client.post(path, json={"reason": "undo"}, headers=h), 400, "idempotency_key_required")
        first = client.post(path, json={"reason": "undo"}, headers={**h, "Idempotency-Key": "r"})
        assert first.status_code == 201, first.text
        assert (first.json()["kind"], first.json()["amount"]) == ("reversal", 50)
        assert self.balance(client, member) == 0
        replay = client.post(path, json={"reason": "undo"}, headers={**h, "Idempotency-Key": "r"})
        assert replay.status_code == 200, replay.text
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["transaction_id"] == first.json()["transaction_id"]
        reused = client.post(path, json={"reason": "other"}, headers={**h, "Idempotency-Key": "r"})
        problem(reused, 409, "idempotency_key_reused")
        again = client.post(path, json={"reason": "undo"}, headers={**h, "Idempotency-Key": "r2"})
        problem(again, 409, "already_reversed")
        of_reversal = f"/admin/v1/transactions/{first.json()['transaction_id']}/reversal"
        problem(client.post(of_reversal, json={"reason": "x"}, headers={**h, "Idempotency-Key": "r3"}), 422)
        unknown = "/admin/v1/transactions/999999/reversal"
        problem(client.post(unknown, json={"reason": "x"}, headers={**h, "Idempotency-Key": "r4"}), 404)
        assert self.balance(client, member) == 0
        assert len(events(client, h, action="ledger.reverse")) == 1

    def test_reversal_cannot_overdraw(self, client: TestClient, staff: Caller, member: Caller) -> None:
        h = staff.headers
        credit = {"user_id": member.id, "amount": 50, "reason": "credit"}
        txn = ok(client.post("/admin/v1/adjustments", json=credit, headers={**h, "Idempotency-Key": "c"}), 201)
        spend = {"user_id": member.id, "amount": -30, "reason": "spent"}
        ok(client.post("/admin/v1/adjustments", json=spend, headers={**h, "Idempotency-Key": "s"}), 201)
        path = f"/admin/v1/transactions/{txn['transaction_id']}/reversal"
        problem(client.post(path, json={"reason": "undo"}, headers={**h, "Idempotency-Key": "r"}), 402)
        assert self.balance(client, member) == 20
