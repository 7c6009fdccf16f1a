"""The finance views: logs with filters and cursor pagination, tenant limits on every route, reports."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from facemint.audit import service as audit_service
from facemint.jobs import queries as job_queries
from facemint.jobs import service as jobs
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import Caller, MakeCaller
from tests.platform.test_tenancy import admin_operations

FINANCE = "/admin/v1/finance"
LOGS = ("recharges", "usage", "ledger", "audit")
FORMULAS = ('=HYPERLINK("http://evil.test","click")', "+1", "-2", "@x")


def make_job(session: Session, user: User, *, outcome: str, units: int = 1) -> Row[Any]:
    """A job through the product's job service: submitted (hold), then left queued, or run and succeeded
    (capture) or failed (release)."""
    assert user.tenant_id is not None
    submitted = jobs.submit(
        session,
        request=jobs.SubmitRequest(
            public_id=jobs.new_public_id(),
            tenant_id=user.tenant_id,
            user_id=user.id,
            api_key_id=None,
            account_id=user.account_id,
            operations=("swap.image",),
            queue="finance-test",
            units=units,
            idempotency_key=uuid.uuid4().hex,
            request_hash=b"finance-test",
            options={},
            input_location="memory://input",
            webhook_url=None,
            max_attempts=1,
            deadline_seconds=600,
        ),
    ).job
    if outcome != "queued":
        running = jobs.claim(session, public_id=submitted.public_id, worker_id="finance-test")
        assert running is not None
        if outcome == "succeeded":
            done = jobs.complete(
                session,
                job_id=running.id,
                attempt=running.attempts,
                result_location="memory://result",
                content_type="image/png",
                size_bytes=1,
                timings_ms={},
                result_ttl_seconds=600,
            )
        else:
            done = jobs.fail(session, job_id=running.id, attempt=running.attempts, code="boom", detail="failed")
        assert done is not None
    session.commit()
    return job_queries.get_by_id(session, job_id=submitted.id)  # type: ignore[return-value]


@dataclass
class Book:
    tenant_a: Tenant
    tenant_b: Tenant
    alice: User  # tenant A
    bob: User  # tenant B
    finance: Caller
    operator: Caller
    admin_a: Caller
    member_a: Caller
    admin_b: Caller
    batch_a: int
    batch_b: int
    job_a: Row[Any]
    job_b: Row[Any]
    started: datetime


def build_book(client: TestClient, session: Session, make_caller: MakeCaller) -> Book:
    """Two tenants with history: single recharges (reasons a spreadsheet would run), batches, an adjustment,
    jobs that succeeded, failed and are still queued, and audit events."""
    started = session.execute(text("SELECT now()")).scalar_one()
    tenant_a, tenant_b = create_tenant(session, name="fin-a"), create_tenant(session, name="fin-b")
    alice, bob = create_user(session, tenant=tenant_a), create_user(session, tenant=tenant_b)
    finance, operator = make_caller(Role.finance), make_caller(Role.operator)
    admin_a, member_a = make_caller(Role.tenant_admin, tenant_a), make_caller(Role.member, tenant_a)
    admin_b = make_caller(Role.tenant_admin, tenant_b)
    for i, reason in enumerate(FORMULAS):
        response = client.post(
            "/admin/v1/recharges",
            json={"user_id": alice.id, "amount": 10 + i, "reason": reason, "reference": f"-ref{i}"},
            headers={**operator.headers, "Idempotency-Key": f"fin-{i}"},
        )
        assert response.status_code == 201, response.text
    response = client.post(
        "/admin/v1/recharges", json={"user_id": bob.id, "amount": 50, "reason": "b"}, headers=_idem(operator, "b")
    )
    assert response.status_code == 201, response.text
    batches = []
    for admin, user, key in ((admin_a, alice, "ba"), (admin_b, bob, "bb")):
        fund(session, account_id=(tenant_a if user is alice else tenant_b).pool_account_id, amount=100)
        response = client.post(
            "/admin/v1/recharges/batch",
            params={"reason": "monthly"},
            content=f"user_id,amount\n{user.id},7\n",
            headers={**_idem(admin, key), "Content-Type": "text/csv"},
        )
        assert response.status_code == 201, response.text
        batches.append(response.json()["batch_id"])
    response = client.post(
        "/admin/v1/adjustments", json={"user_id": alice.id, "amount": -3, "reason": "fix"}, headers=_idem(operator, "a")
    )
    assert response.status_code in (200, 201), response.text
    job_a = make_job(session, alice, outcome="succeeded", units=2)
    make_job(session, alice, outcome="failed", units=1)
    make_job(session, alice, outcome="queued", units=1)
    job_b = make_job(session, bob, outcome="succeeded", units=1)
    return Book(
        tenant_a, tenant_b, alice, bob, finance, operator, admin_a, member_a, admin_b, *batches, job_a, job_b, started
    )


def _idem(caller: Caller, key: str) -> dict[str, str]:
    return {**caller.headers, "Idempotency-Key": key}


@pytest.fixture
def book(client: TestClient, session: Session, make_caller: MakeCaller) -> Book:
    return build_book(client, session, make_caller)


def get(client: TestClient, caller: Caller, path: str, **params: Any) -> Any:
    response = client.get(f"{FINANCE}{path}", params=params, headers=caller.headers)
    assert response.status_code == 200, (path, params, response.text)
    return response.json()


def items(client: TestClient, caller: Caller, log: str, **params: Any) -> list[dict[str, Any]]:
    return list(get(client, caller, f"/{log}", limit=200, **params)["items"])


class TestLogs:
    def test_recharges_one_row_per_credited_entry(self, client: TestClient, session: Session, book: Book) -> None:
        rows = items(client, book.finance, "recharges")
        alice_rows = [r for r in rows if r["user_id"] == book.alice.id]
        # Four single recharges and one batch row credited alice; the pools' funding credited the pools.
        assert sorted(r["amount"] for r in alice_rows) == [7, 10, 11, 12, 13]
        assert {r["reason"] for r in alice_rows} == {*FORMULAS, "monthly"}  # JSON shows the text as is
        batch_row = next(r for r in alice_rows if r["batch_id"] == book.batch_a)
        assert batch_row["row_no"] == 1
        assert batch_row["actor"] == f"key:{_key_id(session, book.admin_a)}"
        assert all(r["amount"] > 0 and r["account_kind"] in ("user", "pool") for r in rows)
        assert [r["entry_id"] for r in rows] == sorted((r["entry_id"] for r in rows), reverse=True)

    def test_recharge_filters(self, client: TestClient, session: Session, book: Book) -> None:
        f = book.finance
        assert {r["batch_id"] for r in items(client, f, "recharges", batch_id=book.batch_a)} == {book.batch_a}
        assert all(r["batch_id"] is not None for r in items(client, f, "recharges", kind="batch"))
        singles = items(client, f, "recharges", kind="single")
        assert singles
        assert all(r["batch_id"] is None for r in singles)
        assert {r["user_id"] for r in items(client, f, "recharges", user_id=book.bob.id)} == {book.bob.id}
        assert {r["tenant_id"] for r in items(client, f, "recharges", tenant_id=book.tenant_b.id)} == {book.tenant_b.id}
        operator = f"key:{_key_id(session, book.operator)}"
        by_operator = items(client, f, "recharges", operator=operator)
        assert len(by_operator) == 5
        assert {r["actor"] for r in by_operator} == {operator}
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert items(client, f, "recharges", **{"from": future}) == []
        assert items(client, f, "recharges", to=book.started.isoformat()) == []
        assert len(items(client, f, "recharges", **{"from": book.started.isoformat()})) == len(
            items(client, f, "recharges")
        )
        bad = client.get(f"{FINANCE}/recharges", params={"kind": "capture"}, headers=f.headers)
        assert bad.status_code == 422
        assert bad.json()["code"] == "invalid_filter"
        bad = client.get(f"{FINANCE}/recharges", params={"job_id": book.job_a.public_id}, headers=f.headers)
        assert bad.status_code == 422
        bad = client.get(f"{FINANCE}/recharges", params={"from": future, "to": future}, headers=f.headers)
        assert bad.status_code == 422

    def test_pagination_is_stable_newest_first(self, client: TestClient, book: Book) -> None:
        for log, id_name in (("recharges", "entry_id"), ("ledger", "entry_id"), ("usage", "id"), ("audit", "id")):
            everything = [r[id_name] for r in items(client, book.finance, log)]
            assert len(everything) >= 3, log
            seen: list[int] = []
            cursor = None
            while True:
                page = get(client, book.finance, f"/{log}", limit=2, **({"cursor": cursor} if cursor else {}))
                seen += [r[id_name] for r in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == everything, log
        bad = client.get(f"{FINANCE}/ledger", params={"cursor": "garbage"}, headers=book.finance.headers)
        assert bad.status_code == 422

    def test_usage_shows_hold_capture_and_release(self, client: TestClient, book: Book) -> None:
        rows = items(client, book.finance, "usage", user_id=book.alice.id)
        by_status = {r["hold_status"]: r for r in rows}
        assert set(by_status) == {"captured", "released", "held"}
        captured = by_status["captured"]
        assert (captured["held"], captured["captured"], captured["released"]) == (2, 2, 0)
        assert captured["job_id"] == book.job_a.public_id
        assert captured["capture_transaction_id"] is not None
        assert captured["price_version"] == 1
        assert captured["operation"] == "swap.image"
        assert captured["finished_at"] is not None
        released = by_status["released"]
        assert (released["held"], released["captured"], released["released"]) == (1, 0, 1)
        assert (by_status["held"]["released"], by_status["held"]["finished_at"]) == (0, None)
        assert [r["hold_status"] for r in items(client, book.finance, "usage", kind="released")] == ["released"]
        for job_id in (book.job_a.public_id, str(book.job_a.id)):
            only = items(client, book.finance, "usage", job_id=job_id)
            assert [r["id"] for r in only] == [book.job_a.id]
        by_operator = items(client, book.finance, "usage", operator=f"user:{book.bob.id}")
        assert [r["user_id"] for r in by_operator] == [book.bob.id]

    def test_ledger_entries_with_balance_after(self, client: TestClient, session: Session, book: Book) -> None:
        rows = items(client, book.finance, "ledger", user_id=book.alice.id)
        assert {r["account_id"] for r in rows} == {book.alice.account_id}
        # Oldest first, each balance_after follows from the one before, and the last is the balance now.
        running = 0
        for row in reversed(rows):
            running += row["amount"]
            assert row["balance_after"] == running
        balance = session.execute(
            text("SELECT balance FROM ledger_accounts WHERE id = :id"), {"id": book.alice.account_id}
        ).scalar_one()
        assert running == balance
        assert {r["kind"] for r in rows} == {"recharge", "adjustment", "capture"}
        captures = items(client, book.finance, "ledger", job_id=book.job_a.public_id)
        assert {r["kind"] for r in captures} == {"capture"}
        assert sorted(r["amount"] for r in captures) == [-2, 2]
        assert {r["account_kind"] for r in captures} == {"user", "system"}
        assert {r["kind"] for r in items(client, book.finance, "ledger", kind="adjustment")} == {"adjustment"}
        batch = items(client, book.finance, "ledger", batch_id=book.batch_b)
        assert sum(r["amount"] for r in batch) == 0
        assert {r["account_kind"] for r in batch} == {"user", "pool"}

    def test_audit_never_shows_secrets(self, client: TestClient, session: Session, book: Book) -> None:
        audit_service.record(
            session,
            context=None,
            action="test.secrets",
            target_type="user",
            target_id=book.alice.id,
            tenant_id=book.tenant_a.id,
            before={"password": "hunter2", "name": "ok"},
            after={"secret": "s3cr3t", "key_hash": "abcd", "nested": {"secret_sha256": "ff", "x": 1}, "api_key": "k"},
        )
        session.commit()
        events = items(client, book.finance, "audit", kind="test.secrets")
        assert len(events) == 1
        assert events[0]["before"] == {"name": "ok"}
        assert events[0]["after"] == {"nested": {"x": 1}}
        # The user filter matches events about that user (and by it).
        about_alice = items(client, book.finance, "audit", user_id=book.alice.id)
        assert any(e["action"] == "test.secrets" for e in about_alice)
        keys = items(client, book.finance, "audit", kind="api_key.create")
        assert keys
        assert all("scopes" in (e["after"] or {}) for e in keys)


def _key_id(session: Session, caller: Caller) -> int:
    return int(session.execute(text("SELECT id FROM api_keys WHERE user_id = :u"), {"u": caller.id}).scalars().first())


def finance_routes(app: FastAPI) -> list[tuple[str, str]]:
    return [(method, path) for method, path in admin_operations(app) if path.startswith(FINANCE)]


class TestAccess:
    def test_every_finance_route_is_a_read(self, app: FastAPI) -> None:
        routes = finance_routes(app)
        assert len(routes) == 10
        assert {m for m, _ in routes} == {"GET"}

    def test_members_get_403_everywhere(self, app: FastAPI, client: TestClient, book: Book) -> None:
        for _, path in finance_routes(app):
            response = client.get(path, headers=book.member_a.headers)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["code"] == "insufficient_scope"

    def test_finance_reads_every_route(self, app: FastAPI, client: TestClient, book: Book) -> None:
        for _, path in finance_routes(app):
            assert client.get(path, headers=book.finance.headers).status_code == 200, path

    def test_tenant_admin_sees_only_its_tenant(self, app: FastAPI, client: TestClient, book: Book) -> None:
        a = book.admin_a
        for log in LOGS:
            rows = items(client, a, log)
            assert rows, log
            assert {r["tenant_id"] for r in rows} == {book.tenant_a.id}, log
            export = client.get(f"{FINANCE}/{log}/export", params={"format": "jsonl"}, headers=a.headers)
            assert export.status_code == 200
            lines = [line for line in export.text.splitlines() if '"_trailer"' not in line]
            assert lines, log
            assert all(f'"tenant_id":{book.tenant_a.id},' in line for line in lines), log
        # Staff see both tenants.
        assert {r["tenant_id"] for r in items(client, book.finance, "ledger")} >= {book.tenant_a.id, book.tenant_b.id}
        daily = get(client, a, "/reports/daily")
        assert {r["tenant_id"] for r in daily["rows"]} == {book.tenant_a.id}
        liability = get(client, a, "/reports/liability")
        assert [t["tenant_id"] for t in liability["tenants"]] == [book.tenant_a.id]

    def test_another_tenants_ids_answer_404(self, app: FastAPI, client: TestClient, book: Book) -> None:
        a = book.admin_a.headers
        paths = [p for _, p in finance_routes(app)]
        for path in paths:
            response = client.get(path, params={"tenant_id": book.tenant_b.id}, headers=a)
            assert response.status_code == 404, (path, response.text)
        for log in LOGS:
            for params in (
                {"user_id": book.bob.id},
                {"batch_id": book.batch_b} if log in ("recharges", "ledger", "audit") else {},
                {"job_id": book.job_b.public_id} if log in ("usage", "ledger", "audit") else {},
            ):
                if not params:
                    continue
                for suffix in ("", "/export"):
                    response = client.get(f"{FINANCE}/{log}{suffix}", params=params, headers=a)
                    assert response.status_code == 404, (log, suffix, params, response.text)
                    assert "fin-b" not in response.text
        # Its own ids work, and a batch that does not exist is a 404 for staff too.
        assert items(client, book.admin_a, "recharges", batch_id=book.batch_a)
        missing = client.get(f"{FINANCE}/recharges", params={"batch_id": 10**9}, headers=book.finance.headers)
        assert missing.status_code == 404


class TestReports:
    def test_daily_identity(self, client: TestClient, session: Session, book: Book) -> None:
        today = datetime.now(UTC).date()
        report = get(
            client, book.finance, "/reports/daily", **{"from": str(today - timedelta(days=2)), "to": str(today)}
        )
        rows = report["rows"]
        assert rows
        for row in rows:
            assert (
                row["opening"] + row["recharged"] - row["consumed"] + row["adjustments"] - row["expired"]
                == row["closing"]
            ), row
        by_tenant = {r["tenant_id"]: r for r in rows if r["day"] == str(today)}
        a = by_tenant[book.tenant_a.id]
        # Alice: 10+11+12+13 single, +7 from the pool (an internal transfer: nets to 0 for the tenant), pool +100.
        assert a["recharged"] == 146
        assert a["consumed"] == 2
        assert a["adjustments"] == -3
        assert a["released"] == 1
        assert a["opening"] == 0
        balances = session.execute(
            text("SELECT sum(balance) FROM ledger_accounts WHERE tenant_id = :t AND balance_tracked"),
            {"t": book.tenant_a.id},
        ).scalar_one()
        assert a["closing"] == balances
        # Earlier days: nothing moved, closing carries into the next opening.
        for tenant in (book.tenant_a.id, book.tenant_b.id):
            days = [r for r in rows if r["tenant_id"] == tenant]
            for before, after in zip(days, days[1:], strict=False):
                assert before["closing"] == after["opening"]

    def test_daily_validation(self, client: TestClient, book: Book) -> None:
        h = book.finance.headers
        assert (
            client.get(
                f"{FINANCE}/reports/daily", params={"from": "2026-02-01", "to": "2026-01-01"}, headers=h
            ).status_code
            == 422
        )
        assert (
            client.get(
                f"{FINANCE}/reports/daily", params={"from": "2020-01-01", "to": "2026-01-01"}, headers=h
            ).status_code
            == 422
        )

    def test_liability_equals_balances(self, client: TestClient, session: Session, book: Book) -> None:
        report = get(client, book.finance, "/reports/liability")
        balance, held = session.execute(
            text("SELECT sum(balance), sum(held) FROM ledger_accounts WHERE balance_tracked")
        ).one()
        assert report["total"] == {"balance": balance, "held": held, "available": balance - held}
        assert held == 1  # the queued job's hold
        assert report["users"]["balance"] + report["pool"]["balance"] == balance
        assert sum(t["total"]["balance"] for t in report["tenants"]) == balance
        # The same instant from the entries and the holds agrees with the accounts.
        now = session.execute(text("SELECT clock_timestamp()")).scalar_one()
        past = get(client, book.finance, "/reports/liability", at=now.isoformat())
        assert past["total"] == report["total"]
        assert past["tenants"] == report["tenants"]
        # Before anything happened, nothing was owed.
        before = get(client, book.finance, "/reports/liability", at=book.started.isoformat())
        assert before["total"] == {"balance": 0, "held": 0, "available": 0}

    def test_liability_at_an_instant_counts_holds_open_then(
        self, client: TestClient, session: Session, book: Book
    ) -> None:
        hold = ledger_holds.reserve(
            session, account_id=book.alice.account_id, amount=5, reference="fin-hold", ttl_seconds=60
        )
        session.commit()
        made = session.execute(text("SELECT created_at FROM holds WHERE id = :id"), {"id": hold.hold_id}).scalar_one()
        ledger_holds.release(session, hold_id=hold.hold_id)
        session.commit()
        tenant = {"tenant_id": book.tenant_a.id}
        # Open at the instant it was made (with the queued job's hold); released since.
        assert get(client, book.finance, "/reports/liability", at=made.isoformat(), **tenant)["total"]["held"] == 6
        assert get(client, book.finance, "/reports/liability", **tenant)["total"]["held"] == 1
