"""API keys: issued once, listed without secrets, last use tracked, refused early and exactly when they should be."""

from __future__ import annotations

import string
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from facemint.api_keys.keys import KEY_LENGTH
from facemint.auth.scopes import Scope
from facemint.users.orm import Role
from tests.factories import bearer, create_tenant, create_user
from tests.platform.conftest import Caller, MakeCaller

_BASE62 = string.digits + string.ascii_letters


def checksum(body: str) -> str:
    """The documented checksum: CRC32 of everything before it, as 6 base62 digits."""
    value, digits = zlib.crc32(body.encode()), []
    for _ in range(6):
        value, rem = divmod(value, 62)
        digits.append(_BASE62[rem])
    return "".join(reversed(digits))


@contextmanager
def count_queries(app: FastAPI) -> Iterator[list[str]]:
    statements: list[str] = []

    def before_cursor_execute(*args: Any) -> None:
        statements.append(args[2])

    engine = app.state.engine
    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before_cursor_execute)


def create_key(client: TestClient, admin_headers: dict[str, str], user_id: int, **extra: Any) -> Any:
    body = {"user_id": user_id, "name": "ci", "scopes": ["balance:read", "ledger:read"], **extra}
    return client.post("/admin/v1/api-keys", json=body, headers=admin_headers)


def key_id_of(client: TestClient, admin: Caller, user_id: int) -> int:
    listing = client.get("/admin/v1/api-keys", params={"user_id": user_id}, headers=admin.headers).json()
    [item] = listing["items"]
    return int(item["id"])


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code, body
    return body


class TestIssuing:
    def test_created_key_is_shown_once_and_works(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        member = create_user(session, tenant=tenant)
        response = create_key(client, admin.headers, member.id)
        assert response.status_code == 201, response.text
        created = response.json()
        key = created["key"]
        assert key.startswith("fmk_")
        assert len(key) == KEY_LENGTH
        assert key.startswith(created["prefix"])
        assert created["scopes"] == ["balance:read", "ledger:read"]
        assert created["user_id"] == member.id
        assert created["tenant_id"] == tenant.id
        assert client.get("/v1/balance", headers=bearer(key)).status_code == 200
        # Never again: not by id, not in the listing.
        again = client.get(f"/admin/v1/api-keys/{created['id']}", headers=admin.headers)
        assert again.status_code == 200
        assert "key" not in again.json()
        assert key not in again.text

    def test_keys_are_stored_as_peppered_hashes(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        created = create_key(client, admin.headers, admin.id).json()
        row = session.execute(text("SELECT * FROM api_keys WHERE id = :id"), {"id": created["id"]}).one()
        stored = " ".join(str(v) for v in row)
        secret = created["key"][len(created["prefix"]) :]
        assert created["key"] not in stored
        assert secret[:16] not in stored
        assert len(bytes(row.secret_hash)) == 32

    def test_listing_shows_metadata_never_the_key_or_its_hash(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        member = create_user(session, tenant=tenant)
        expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
        created = create_key(client, admin.headers, member.id, expires_at=expires.isoformat()).json()
        listing = client.get("/admin/v1/api-keys", params={"user_id": member.id}, headers=admin.headers)
        assert listing.status_code == 200
        [item] = listing.json()["items"]
        assert item["prefix"] == created["prefix"]
        assert item["scopes"] == ["balance:read", "ledger:read"]
        assert datetime.fromisoformat(item["expires_at"]) == expires
        assert item["last_used_at"] is None
        assert "key" not in item
        assert not any("hash" in field for field in item)
        stored_hash = session.execute(
            text("SELECT secret_hash FROM api_keys WHERE id = :id"), {"id": created["id"]}
        ).scalar_one()
        for rendering in (bytes(stored_hash).hex(), created["key"], created["key"][len(created["prefix"]) :]):
            assert rendering not in listing.text

    def test_last_use_is_tracked_and_listed(
        self, client: TestClient, session: Session, redis_client: Redis, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        member = make_caller(Role.member, tenant)
        key_id = key_id_of(client, admin, member.id)
        before = datetime.now(UTC).replace(microsecond=0)
        assert client.get("/v1/balance", headers=member.headers).status_code == 200
        assert redis_client.get(f"facemint:api-key:last-used:{key_id}") is not None
        item = client.get(f"/admin/v1/api-keys/{key_id}", headers=admin.headers).json()
        seen = datetime.fromisoformat(item["last_used_at"])
        assert before <= seen <= datetime.now(UTC)
        listed = client.get("/admin/v1/api-keys", params={"user_id": member.id}, headers=admin.headers).json()
        assert listed["items"][0]["last_used_at"] == item["last_used_at"]
        # The database keeps a copy (at most once a minute), so the listing survives a Redis flush.
        redis_client.flushdb()
        stored = session.execute(text("SELECT last_used_at FROM api_keys WHERE id = :id"), {"id": key_id}).scalar()
        assert stored is not None
        after_flush = client.get(f"/admin/v1/api-keys/{key_id}", headers=admin.headers).json()
        assert after_flush["last_used_at"] is not None

    def test_expiry_in_the_past_is_refused(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        admin = make_caller(Role.tenant_admin, create_tenant(session))
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        problem(create_key(client, admin.headers, admin.id, expires_at=past), 422, "invalid_expiry")
        naive = datetime.now().replace(tzinfo=None) + timedelta(days=1)
        problem(create_key(client, admin.headers, admin.id, expires_at=naive.isoformat()), 422, "validation_error")


class TestRefusals:
    def test_bad_checksum_is_refused_without_any_database_query(
        self, app: FastAPI, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        member = make_caller(Role.member)
        key = member.key
        last = key[-1]
        bad_checksum = key[:-1] + ("a" if last != "a" else "b")
        body = key[:-6]
        changed_secret = body[:-1] + ("a" if body[-1] != "a" else "b") + key[-6:]
        malformed = [bad_checksum, changed_secret, "fmk_", "fmk_short", key + "x", key.replace("_", "-", 2)]
        for candidate in malformed:
            with count_queries(app) as statements:
                response = client.get("/v1/balance", headers=bearer(candidate))
            problem(response, 401, "unauthorized")
            assert statements == [], f"{candidate!r} reached the database: {statements}"
        # The counter does see queries: a well-formed key is looked up.
        with count_queries(app) as statements:
            assert client.get("/v1/balance", headers=member.headers).status_code == 200
        assert statements

    def test_wrong_secret_with_a_valid_checksum_is_401(
        self, app: FastAPI, client: TestClient, make_caller: MakeCaller
    ) -> None:
        member = make_caller(Role.member)
        prefix = member.key[: len("fmk_") + 13]
        secret = member.key[len(prefix) : -6]
        other_secret = secret[::-1] if secret[::-1] != secret else "A" * len(secret)
        forged = prefix + other_secret + checksum(prefix + other_secret)
        problem(client.get("/v1/balance", headers=bearer(forged)), 401, "unauthorized")
        # An unknown public id with a valid checksum is refused the same way.
        unknown = "fmk_" + "Z" * 12 + "_" + secret
        problem(client.get("/v1/balance", headers=bearer(unknown + checksum(unknown))), 401, "unauthorized")
        assert client.get("/v1/balance", headers=member.headers).status_code == 200

    def test_revoked_key_is_refused_at_once(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        member = make_caller(Role.member, tenant)
        key_id = key_id_of(client, admin, member.id)
        assert client.get("/v1/balance", headers=member.headers).status_code == 200
        revoked = client.delete(f"/admin/v1/api-keys/{key_id}", headers=admin.headers)
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        problem(client.get("/v1/balance", headers=member.headers), 401, "unauthorized")
        listing = client.get("/admin/v1/api-keys", params={"user_id": member.id}, headers=admin.headers).json()
        assert listing["items"] == []
        with_revoked = client.get(
            "/admin/v1/api-keys", params={"user_id": member.id, "include_revoked": True}, headers=admin.headers
        ).json()
        assert [k["id"] for k in with_revoked["items"]] == [key_id]
        # Revoking again changes nothing and records nothing new.
        assert client.delete(f"/admin/v1/api-keys/{key_id}", headers=admin.headers).status_code == 200
        events = client.get("/admin/v1/audit-events", params={"action": "api_key.revoke"}, headers=admin.headers).json()
        assert len(events["items"]) == 1

    def test_expired_key_is_401(self, client: TestClient, session: Session, make_caller: MakeCaller) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        member = create_user(session, tenant=tenant)
        soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        created = create_key(client, admin.headers, member.id, expires_at=soon).json()
        assert client.get("/v1/balance", headers=bearer(created["key"])).status_code == 200
        session.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :id"), {"id": created["id"]}
        )
        session.commit()
        body = problem(client.get("/v1/balance", headers=bearer(created["key"])), 401, "unauthorized")
        assert "expired" in body["detail"]

    def test_frozen_owner_makes_the_key_useless(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        member = make_caller(Role.member)
        member.user.status = "frozen"
        session.commit()
        problem(client.get("/v1/balance", headers=member.headers), 403, "user_frozen")


class TestScopes:
    def test_a_key_cannot_exceed_its_users_role(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        admin = make_caller(Role.tenant_admin, tenant)
        member = create_user(session, tenant=tenant)
        body = problem(
            create_key(client, admin.headers, member.id, scopes=["balance:read", "users:read"]),
            422,
            "scope_not_allowed",
        )
        assert body["scopes"] == ["users:read"]
        # Not even platform staff can hand a member's key an admin scope.
        staff = make_caller(Role.platform_admin)
        problem(create_key(client, staff.headers, member.id, scopes=["tenants:read"]), 422, "scope_not_allowed")
        # Nor can a tenant admin give themselves a scope their role lacks.
        problem(create_key(client, admin.headers, admin.id, scopes=["tenants:write"]), 422, "scope_not_allowed")
        assert (
            session.execute(text("SELECT count(*) FROM api_keys WHERE user_id = :id"), {"id": member.id}).scalar() == 0
        )

    def test_unknown_scope_is_a_validation_error(self, client: TestClient, make_caller: MakeCaller) -> None:
        admin = make_caller(Role.platform_admin)
        problem(create_key(client, admin.headers, admin.id, scopes=["root"]), 422, "validation_error")
        problem(create_key(client, admin.headers, admin.id, scopes=[]), 422, "validation_error")

    def test_a_lowered_role_narrows_existing_keys(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        tenant = create_tenant(session)
        deputy = make_caller(Role.tenant_admin, tenant, scopes=[Scope.users_read, Scope.balance_read])
        assert client.get("/admin/v1/users", headers=deputy.headers).status_code == 200
        deputy.user.role = Role.member.value
        session.commit()
        problem(client.get("/admin/v1/users", headers=deputy.headers), 403, "insufficient_scope")
        assert client.get("/v1/balance", headers=deputy.headers).status_code == 200

    def test_a_key_only_carries_the_scopes_it_was_given(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        admin = make_caller(Role.tenant_admin, create_tenant(session), scopes=[Scope.users_read])
        assert client.get("/admin/v1/users", headers=admin.headers).status_code == 200
        body = problem(client.get("/admin/v1/api-keys", headers=admin.headers), 403, "insufficient_scope")
        assert body["missing"] == ["api-keys:read"]

    def test_tenant_admin_cannot_issue_keys_for_another_tenants_user(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        admin_a = make_caller(Role.tenant_admin, create_tenant(session))
        tenant_b = create_tenant(session)
        member_b = create_user(session, tenant=tenant_b)
        staff = make_caller(Role.platform_admin)
        problem(create_key(client, admin_a.headers, member_b.id), 404, "user_not_found")
        problem(create_key(client, admin_a.headers, staff.id), 404, "user_not_found")
        problem(create_key(client, admin_a.headers, 999_999), 404, "user_not_found")
        assert (
            session.execute(text("SELECT count(*) FROM api_keys WHERE user_id = :id"), {"id": member_b.id}).scalar()
            == 0
        )
