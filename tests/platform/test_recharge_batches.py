"""Batch recharges through HTTP (`POST /admin/v1/recharges/batch`): every row failure with its row number,
atomic and partial modes, dry runs, idempotent replays, and whole-document errors. Concurrency and size are
in test_recharge_batch_runs.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind
from facemint.app import create_app
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.conftest import make_settings
from tests.factories import create_tenant, create_user
from tests.platform.recharge_helpers import (
    Actor,
    assert_problem,
    audit_events,
    balance_of,
    batch_entries,
    count,
    csv_body,
    freeze,
    fund_pool,
    post_batch,
    recharge_transactions,
    staff,
    tenant_admin,
)

CEILING = 10_000_000


@dataclass
class World:
    operator: Actor
    tenant: Tenant
    admin: Actor  # tenant admin of `tenant`
    a1: User
    a2: User
    frozen: User  # of `tenant`
    other_tenant: Tenant
    b1: User  # of `other_tenant`


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def world(session: Session, settings: Settings) -> World:
    tenant, other = create_tenant(session), create_tenant(session)
    frozen = create_user(session, tenant=tenant, email="frozen@a.example.test", password=None)
    freeze(session, frozen)
    return World(
        operator=staff(session, settings, Role.operator),
        tenant=tenant,
        admin=tenant_admin(session, settings, tenant),
        a1=create_user(session, tenant=tenant, email="a1@a.example.test", password=None),
        a2=create_user(session, tenant=tenant, email="a2@a.example.test", password=None),
        frozen=frozen,
        other_tenant=other,
        b1=create_user(session, tenant=other, email="b1@b.example.test", password=None),
    )


def _codes(body: dict[str, Any]) -> dict[int, str]:
    rows = [f["row"] for f in body["failed"]]
    assert rows == sorted(rows), "failures are listed in row order"
    assert len(rows) == len(set(rows)), "one failure per row"
    return {f["row"]: f["code"] for f in body["failed"]}


def _nothing_applied(session: Session, *users: User) -> None:
    assert [balance_of(session, u.account_id) for u in users] == [0] * len(users)
    assert count(session, "recharge_batches") == 0
    assert recharge_transactions(session) == 0


class TestRowFailures:
    def test_every_csv_row_failure_by_email_with_its_row_number(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        csv = csv_body(
            "email,amount,reference",
            f"{world.a1.email},100,ref-1",  # 1 ok
            "nobody@a.example.test,5,",  # 2
            f"{world.b1.email},5,",  # 3 (staff, scoped to the tenant with ?tenant_id)
            f"{world.frozen.email},5,",  # 4
            f"{world.a2.email},0,",  # 5
            f"{world.a2.email},-5,",  # 6
            f"{world.a2.email},1.5,",  # 7
            f"{world.a2.email},abc,",  # 8
            f"{world.a2.email},,",  # 9
            f"{world.a2.email},{CEILING + 1},",  # 10
            f"{world.a1.email.upper()},7,dup",  # 11 second occurrence of a1
            f"{world.a2.email},5",  # 12 too few columns
            f"{world.a2.email},5,x,y",  # 13 too many columns
            "",  # a blank line is not a row
            f"{world.a2.email},30,ref-14",  # 14 ok
        )
        response = post_batch(
            client, world.operator, csv, key="rows-1", mode="partial", tenant_id=world.tenant.id, reason="monthly"
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert _codes(body) == {
            2: "unknown_user",
            3: "user_of_other_tenant",
            4: "user_frozen",
            5: "invalid_amount",
            6: "invalid_amount",
            7: "invalid_amount",
            8: "invalid_amount",
            9: "invalid_amount",
            10: "amount_above_ceiling",
            11: "duplicate_user",
            12: "malformed_row",
            13: "malformed_row",
        }
        failed = {f["row"]: f for f in body["failed"]}
        assert failed[2]["email"] == "nobody@a.example.test"
        assert failed[11]["email"] == world.a1.email
        assert (body["rows"], body["applied"], body["total_amount"]) == (14, 2, 130)
        assert (body["mode"], body["dry_run"]) == ("partial", False)
        assert balance_of(session, world.a1.account_id) == 100
        assert balance_of(session, world.a2.account_id) == 30
        assert balance_of(session, world.b1.account_id) == 0
        assert balance_of(session, world.frozen.account_id) == 0
        # The ledger keeps each credit's row number and reference, and one debit of the source for the total.
        issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
        assert batch_entries(session, body["transaction_id"]) == [
            {"account_id": issuance, "amount": -130, "row_no": None, "reference": None},
            {"account_id": world.a1.account_id, "amount": 100, "row_no": 1, "reference": "ref-1"},
            {"account_id": world.a2.account_id, "amount": 30, "row_no": 14, "reference": "ref-14"},
        ]
        stored = session.execute(
            text(
                "SELECT b.mode, b.reason, b.tenant_id, b.row_count, b.applied_count, b.failed_count, b.total_amount, "
                "t.amount, t.reason AS txn_reason FROM recharge_batches b JOIN ledger_transactions t "
                "ON t.batch_id = b.id WHERE b.id = :id"
            ),
            {"id": body["batch_id"]},
        ).one()
        assert tuple(stored) == ("partial", "monthly", world.tenant.id, 14, 2, 12, 130, 130, "monthly")

    def test_csv_by_user_id(self, client: TestClient, session: Session, world: World) -> None:
        csv = csv_body(
            "user_id,amount",
            f"{world.a1.id},10",  # 1 ok
            "999999,5",  # 2
            "x1,5",  # 3
            f"{world.b1.id},5",  # 4
            f"{world.a1.id},5",  # 5
            f" {world.a2.id} , 20 ",  # 6 ok, padded
        )
        response = post_batch(client, world.operator, csv, key="uid", mode="partial", tenant_id=world.tenant.id)
        assert response.status_code == 201, response.text
        body = response.json()
        assert _codes(body) == {2: "unknown_user", 3: "malformed_row", 4: "user_of_other_tenant", 5: "duplicate_user"}
        assert {f["row"]: f.get("user_id") for f in body["failed"]}[2] == 999999
        assert (balance_of(session, world.a1.account_id), balance_of(session, world.a2.account_id)) == (10, 20)
        assert balance_of(session, world.b1.account_id) == 0

    def test_staff_without_tenant_id_may_credit_any_tenant(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        csv = csv_body("email,amount", f"{world.a1.email},3", f"{world.b1.email},4")
        response = post_batch(client, world.operator, csv, key="any")
        assert response.status_code == 201, response.text
        assert response.json()["failed"] == []
        assert (balance_of(session, world.a1.account_id), balance_of(session, world.b1.account_id)) == (3, 4)

    def test_a_suspended_tenants_users_are_refused(self, client: TestClient, session: Session, world: World) -> None:
        session.execute(text("UPDATE tenants SET status = 'suspended' WHERE id = :id"), {"id": world.other_tenant.id})
        session.commit()
        csv = csv_body("email,amount", f"{world.a1.email},10", f"{world.b1.email},10")
        response = post_batch(client, world.operator, csv, key="susp", mode="partial")
        assert response.status_code == 201, response.text
        assert _codes(response.json()) == {2: "tenant_suspended"}
        assert (balance_of(session, world.a1.account_id), balance_of(session, world.b1.account_id)) == (10, 0)

    def test_tenant_admin_sees_another_tenants_user_as_unknown(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        fund_pool(session, world.tenant, 1000)
        csv = csv_body("email,amount", f"{world.a1.email},10", f"{world.b1.email},10")
        response = post_batch(client, world.admin, csv, key="ta", mode="partial")
        assert response.status_code == 201, response.text
        assert _codes(response.json()) == {2: "unknown_user"}
        assert balance_of(session, world.b1.account_id) == 0
        assert balance_of(session, world.a1.account_id) == 10
        assert balance_of(session, world.tenant.pool_account_id) == 990

    def test_tenant_admin_cannot_name_another_tenant(self, client: TestClient, session: Session, world: World) -> None:
        fund_pool(session, world.tenant, 1000)
        csv = csv_body("email,amount", f"{world.b1.email},10")
        response = post_batch(client, world.admin, csv, key="ta2", tenant_id=world.other_tenant.id)
        assert_problem(response, 404, "tenant_not_found")
        _nothing_applied(session, world.b1)

    def test_every_json_row_failure(self, client: TestClient, session: Session, world: World) -> None:
        a1, a2 = world.a1, world.a2
        items: list[Any] = [
            {"email": a1.email, "amount": 10, "reference": "j1"},  # 1 ok
            {"user_id": a2.id, "amount": 20},  # 2 ok
            {"email": a1.email, "user_id": a2.id, "amount": 5},  # 3 both
            {"amount": 5},  # 4 neither
            {"email": "c@a.example.test", "amount": 5, "note": "x"},  # 5 unknown field
            {"user_id": a2.id, "amount": "abc"},  # 6
            {"user_id": a2.id, "amount": 1.5},  # 7
            {"user_id": a2.id, "amount": True},  # 8
            {"user_id": a2.id, "amount": 0},  # 9
            {"user_id": a2.id, "amount": -5},  # 10
            {"user_id": a2.id},  # 11 no amount
            "not an object",  # 12
            {"user_id": a2.id, "amount": 10},  # 13 second occurrence of a2
            {"user_id": world.frozen.id, "amount": 10},  # 14
            {"email": "ghost@a.example.test", "amount": 10},  # 15
            {"user_id": a1.id, "amount": CEILING + 1},  # 16
        ]
        response = post_batch(
            client, world.operator, {"reason": "json run", "items": items}, key="j", mode="partial", reason=None
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert _codes(body) == {
            3: "malformed_row",
            4: "malformed_row",
            5: "malformed_row",
            6: "invalid_amount",
            7: "invalid_amount",
            8: "invalid_amount",
            9: "invalid_amount",
            10: "invalid_amount",
            11: "invalid_amount",
            12: "malformed_row",
            13: "duplicate_user",
            14: "user_frozen",
            15: "unknown_user",
            16: "amount_above_ceiling",
        }
        assert (body["rows"], body["applied"], body["total_amount"]) == (16, 2, 30)
        assert (balance_of(session, a1.account_id), balance_of(session, a2.account_id)) == (10, 20)
        entries = batch_entries(session, body["transaction_id"])
        assert [(e["row_no"], e["reference"]) for e in entries] == [(None, None), (1, "j1"), (2, None)]
        reason = session.execute(
            text("SELECT reason FROM recharge_batches WHERE id = :id"), {"id": body["batch_id"]}
        ).scalar_one()
        assert reason == "json run"


class TestModes:
    def test_atomic_with_bad_rows_applies_nothing_and_lists_every_failure(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        good = [f"{world.a1.email},10", f"{world.a2.email},20"]
        csv = csv_body("email,amount", good[0], "ghost@a.example.test,5", good[1], f"{world.a2.email},0")
        response = post_batch(client, world.operator, csv, key="atomic-1")
        body = assert_problem(response, 422, "batch_rejected")
        assert _codes(body) == {2: "unknown_user", 4: "invalid_amount"}
        assert (body["rows"], body["applied"], body["total_amount"]) == (4, 0, 0)
        _nothing_applied(session, world.a1, world.a2)
        assert audit_events(session, "recharge.batch") == []
        # Nothing was stored under the key: the corrected file goes through with the same key.
        fixed = post_batch(client, world.operator, csv_body("email,amount", *good), key="atomic-1")
        assert fixed.status_code == 201, fixed.text
        assert (balance_of(session, world.a1.account_id), balance_of(session, world.a2.account_id)) == (10, 20)

    def test_atomic_without_failures_applies_everything(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        csv = csv_body("email,amount,reference", f"{world.a1.email},11,x", f"{world.a2.email},22,y")
        response = post_batch(client, world.operator, csv, key="atomic-2")
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["applied"], body["total_amount"], body["failed"]) == (2, 33, [])
        assert isinstance(body["batch_id"], int)
        assert isinstance(body["transaction_id"], int)
        assert (balance_of(session, world.a1.account_id), balance_of(session, world.a2.account_id)) == (11, 22)

    def test_partial_where_every_row_fails_moves_nothing(
        self, client: TestClient, session: Session, world: World
    ) -> None:
        csv = csv_body("email,amount", "ghost@a.example.test,5", f"{world.frozen.email},5")
        response = post_batch(client, world.operator, csv, key="p0", mode="partial")
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["applied"], body["total_amount"], body["transaction_id"]) == (0, 0, None)
        assert isinstance(body["batch_id"], int), "the batch is stored, so the key replays"
        assert recharge_transactions(session) == 0
        again = post_batch(client, world.operator, csv, key="p0", mode="partial")
        assert again.status_code == 200
        assert again.json() == body

    def test_dry_run_moves_and_stores_nothing(self, client: TestClient, session: Session, world: World) -> None:
        csv = csv_body("email,amount", f"{world.a1.email},10", "ghost@a.example.test,1", f"{world.a2.email},20")
        dry = post_batch(client, world.operator, csv, key="dry", mode="partial", dry_run=True)
        assert dry.status_code == 200, dry.text
        assert "Idempotent-Replayed" not in dry.headers
        body = dry.json()
        assert (body["dry_run"], body["batch_id"], body["applied"], body["total_amount"]) == (True, None, 2, 30)
        assert _codes(body) == {2: "unknown_user"}
        _nothing_applied(session, world.a1, world.a2)
        assert audit_events(session, "recharge.batch") == []
        # A dry run twice is still a dry run, and the key is free for the real run.
        assert post_batch(client, world.operator, csv, key="dry", mode="partial", dry_run=True).status_code == 200
        real = post_batch(client, world.operator, csv, key="dry", mode="partial")
        assert real.status_code == 201, real.text
        assert (real.json()["applied"], real.json()["dry_run"]) == (2, False)
        assert (balance_of(session, world.a1.account_id), balance_of(session, world.a2.account_id)) == (10, 20)
        # A dry run never replays a key either: it validates again, now that the key is used.
        after = post_batch(client, world.operator, csv, key="dry", mode="partial", dry_run=True)
        assert after.status_code == 200
        assert "Idempotent-Replayed" not in after.headers
        assert (after.json()["dry_run"], after.json()["batch_id"]) == (True, None)
        assert count(session, "recharge_batches") == 1

    def test_atomic_dry_run_reports_the_rejection(self, client: TestClient, session: Session, world: World) -> None:
        csv = csv_body("email,amount", f"{world.a1.email},10", "ghost@a.example.test,1")
        body = assert_problem(post_batch(client, world.operator, csv, key="dry-a", dry_run=True), 422, "batch_rejected")
        assert _codes(body) == {2: "unknown_user"}
        _nothing_applied(session, world.a1)


class TestIdempotency:
    def test_same_key_replays_the_stored_result(self, client: TestClient, session: Session, world: World) -> None:
        csv = csv_body("email,amount", f"{world.a1.email},10", "ghost@a.example.test,1")
        first = post_batch(client, world.operator, csv, key="replay", mode="partial")
        assert first.status_code == 201, first.text
        assert "Idempotent-Replayed" not in first.headers
        again = post_batch(client, world.operator, csv, key="replay", mode="partial")
        assert again.status_code == 200, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
        assert balance_of(session, world.a1.account_id) == 10
        assert count(session, "recharge_batches") == 1
        assert recharge_transactions(session) == 1
        assert len(audit_events(session, "recharge.batch")) == 1

    @pytest.mark.parametrize(
        ("change", "value"), [("body", None), ("mode", "atomic"), ("reason", "other"), ("tenant", None)]
    )
    def test_same_key_with_another_request_is_409(
        self, client: TestClient, session: Session, world: World, change: str, value: str | None
    ) -> None:
        csv = csv_body("email,amount", f"{world.a1.email},10")
        first = post_batch(client, world.operator, csv, key="k", mode="partial", reason="r")
        assert first.status_code == 201, first.text
        kwargs: dict[str, Any] = {"mode": "partial", "reason": "r"}
        body = csv
        if change == "body":
            body = csv_body("email,amount", f"{world.a1.email},11")
        elif change == "tenant":
            kwargs["tenant_id"] = world.tenant.id
        else:
            kwargs[change] = value
        assert_problem(post_batch(client, world.operator, body, key="k", **kwargs), 409, "idempotency_key_reused")
        assert balance_of(session, world.a1.account_id) == 10
        assert count(session, "recharge_batches") == 1

    def test_missing_idempotency_key_is_refused(self, client: TestClient, session: Session, world: World) -> None:
        csv = csv_body("email,amount", f"{world.a1.email},10")
        assert_problem(post_batch(client, world.operator, csv, key=None), 400, "idempotency_key_required")
        _nothing_applied(session, world.a1)


class TestWholeDocumentErrors:
    @pytest.mark.parametrize(
        ("body", "content_type", "status", "code"),
        [
            ("name,amount\nx@a.example.test,5\n", "text/csv", 400, "invalid_csv_header"),
            ("email,amount,reference,extra\nx@a.example.test,5,r,e\n", "text/csv", 400, "invalid_csv_header"),
            ("amount,email\n5,x@a.example.test\n", "text/csv", 400, "invalid_csv_header"),
            (b"email,amount\ncaf\xe9@a.example.test,5\n", "text/csv", 400, "invalid_encoding"),
            ("", "text/csv", 422, "empty_batch"),
            ("email,amount\n", "text/csv", 422, "empty_batch"),
            ("email,amount\n\n\n", "text/csv", 422, "empty_batch"),
            ('{"reason": "r", "items": []}', "application/json", 422, "empty_batch"),
            ("{not json", "application/json", 400, "invalid_json"),
            ('{"items": [], "extra": 1}', "application/json", 422, "invalid_batch"),
            ("email,amount\nx@a.example.test,5\n", "text/plain", 415, "unsupported_media_type"),
            ("email,amount\nx@a.example.test,5\n", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ],
    )
    def test_document_errors(
        self,
        client: TestClient,
        session: Session,
        world: World,
        body: str | bytes,
        content_type: str,
        status: int,
        code: str,
    ) -> None:
        response = post_batch(client, world.operator, body, key="doc", content_type=content_type)
        assert_problem(response, status, code)
        _nothing_applied(session, world.a1)

    def test_reason_is_required(self, client: TestClient, session: Session, world: World) -> None:
        csv = csv_body("email,amount", f"{world.a1.email},10")
        assert_problem(post_batch(client, world.operator, csv, key="r", reason=None), 422, "reason_required")
        assert_problem(post_batch(client, world.operator, csv, key="r", reason="   "), 422, "reason_required")
        json_body = {"items": [{"email": world.a1.email, "amount": 10}]}
        assert_problem(post_batch(client, world.operator, json_body, key="r", reason=None), 422, "reason_required")
        _nothing_applied(session, world.a1)

    def test_body_over_the_byte_limit_is_413(
        self, session: Session, world: World, database_url: str, redis_url: str
    ) -> None:
        small = make_settings(database_url, redis_url, batch_max_bytes=1024)
        lines = [f"{world.a1.email},1"] + [f"pad{i:04d}@a.example.test,1" for i in range(60)]
        csv = csv_body("email,amount", *lines)
        assert len(csv.encode()) > 1024
        with TestClient(create_app(small)) as small_client:
            assert_problem(post_batch(small_client, world.operator, csv, key="big"), 413, "payload_too_large")
            fits = post_batch(small_client, world.operator, csv_body("email,amount", lines[0]), key="small")
            assert fits.status_code == 201, fits.text
        assert balance_of(session, world.a1.account_id) == 1

    def test_more_rows_than_allowed_is_413(
        self, session: Session, world: World, database_url: str, redis_url: str
    ) -> None:
        few = make_settings(database_url, redis_url, batch_max_rows=3)
        rows = [f"r{i}@a.example.test,1" for i in range(4)]
        items = [{"email": f"r{i}@a.example.test", "amount": 1} for i in range(4)]
        with TestClient(create_app(few)) as few_client:
            for body in (csv_body("email,amount", *rows), {"reason": "r", "items": items}):
                assert_problem(post_batch(few_client, world.operator, body, key="many"), 413, "batch_too_large")
            three = csv_body("email,amount", f"{world.a1.email},1", f"{world.a2.email},1", f"{world.b1.email},1")
            response = post_batch(few_client, world.operator, three, key="three")
            assert response.status_code == 201, response.text
        assert balance_of(session, world.b1.account_id) == 1


class TestTenantPool:
    def test_tenant_admin_batch_debits_the_pool(self, client: TestClient, session: Session, world: World) -> None:
        fund_pool(session, world.tenant, 100)
        csv = csv_body("email,amount", f"{world.a1.email},60", f"{world.a2.email},40")
        response = post_batch(client, world.admin, csv, key="pool")
        assert response.status_code == 201, response.text
        assert balance_of(session, world.tenant.pool_account_id) == 0
        entries = batch_entries(session, response.json()["transaction_id"])
        assert entries[0] == {
            "account_id": world.tenant.pool_account_id,
            "amount": -100,
            "row_no": None,
            "reference": None,
        }

    @pytest.mark.parametrize("mode", ["atomic", "partial"])
    def test_tenant_admin_batch_beyond_the_pool_is_402(
        self, client: TestClient, session: Session, world: World, mode: str
    ) -> None:
        fund_pool(session, world.tenant, 100)
        csv = csv_body("email,amount", f"{world.a1.email},60", f"{world.a2.email},41")
        body = assert_problem(post_batch(client, world.admin, csv, key="over", mode=mode), 402, "insufficient_tokens")
        assert (body["needed"], body["available"]) == (101, 100)
        _nothing_applied(session, world.a1, world.a2)
        assert balance_of(session, world.tenant.pool_account_id) == 100


def test_the_batch_is_audited_with_its_totals(client: TestClient, session: Session, world: World) -> None:
    csv = csv_body("email,amount", f"{world.a1.email},10", "ghost@a.example.test,5", f"{world.a2.email},15")
    response = post_batch(
        client, world.operator, csv, key="audit", mode="partial", tenant_id=world.tenant.id, reason="audit me"
    )
    assert response.status_code == 201, response.text
    result = response.json()
    [event] = audit_events(session, "recharge.batch")
    assert (event.target_type, event.target_id) == ("recharge_batch", str(result["batch_id"]))
    assert event.actor_user_id == world.operator.user.id
    assert event.tenant_id == world.tenant.id
    after = event.after
    assert (after["mode"], after["reason"], after["rows"], after["applied"], after["failed"]) == (
        "partial",
        "audit me",
        3,
        2,
        1,
    )
    assert (after["total_amount"], after["transaction_id"]) == (25, result["transaction_id"])
    assert after["source_account_id"] == ledger.system_account_id(session, kind=AccountKind.issuance)


def test_a_batchs_rows_in_file_order_a_page_at_a_time(
    client: TestClient, session: Session, settings: Settings, world: World
) -> None:
    csv = csv_body(
        "email,amount,reference", f"{world.a2.email},30,r1", "ghost@a.example.test,5,", f"{world.a1.email},7,r3"
    )
    created = post_batch(client, world.operator, csv, key="rows-api", mode="partial", tenant_id=world.tenant.id)
    assert created.status_code == 201, created.text
    batch_id = created.json()["batch_id"]
    path = f"/admin/v1/recharges/batches/{batch_id}/rows"
    first = client.get(path, params={"limit": 1}, headers=world.operator.headers())
    assert first.status_code == 200, first.text
    assert first.json()["items"] == [
        {
            "row": 1,
            "user_id": world.a2.id,
            "email": world.a2.email,
            "amount": 30,
            "balance_after": 30,
            "reference": "r1",
        }
    ]
    rest = client.get(path, params={"cursor": first.json()["next_cursor"]}, headers=world.operator.headers()).json()
    assert [(r["row"], r["user_id"], r["amount"]) for r in rest["items"]] == [(3, world.a1.id, 7)]
    assert rest["next_cursor"] is None
    # The batch's tenant admin reads them; another tenant's admin is told it does not exist.
    assert client.get(path, headers=world.admin.headers()).status_code == 200
    stranger = tenant_admin(session, settings, world.other_tenant)
    assert_problem(client.get(path, headers=stranger.headers()), 404, "batch_not_found")
