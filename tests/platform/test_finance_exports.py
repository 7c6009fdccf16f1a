"""Streamed finance exports: formula cells neutralised, no key material, trailer totals equal to the database,
one consistent snapshot while settlements run, and `facemint export` writing a file."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import holds as ledger_holds
from facemint.audit import service as audit_service
from facemint.cli.main import cli
from facemint.config import Settings, get_settings
from facemint.finance import logs, service
from facemint.finance.exports import ExportStream, parse_csv_trailer
from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.conftest import Caller, MakeCaller
from tests.platform.test_finance import FINANCE, FORMULAS, LOGS, Book, build_book


@pytest.fixture
def book(client: TestClient, session: Session, make_caller: MakeCaller) -> Book:
    return build_book(client, session, make_caller)


def export(client: TestClient, caller: Caller, log: str, fmt: str, **params: Any) -> str:
    response = client.get(f"{FINANCE}/{log}/export", params={"format": fmt, **params}, headers=caller.headers)
    assert response.status_code == 200, response.text
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=")
    assert disposition.endswith(f'.{fmt}"')
    assert response.headers["content-type"].startswith("text/csv" if fmt == "csv" else "application/x-ndjson")
    return response.text


def parse_csv(body: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    lines = body.splitlines()
    assert lines[-1].startswith("# totals")
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[:-1]) + "\n")))
    return rows, parse_csv_trailer(lines[-1])


def parse_jsonl(body: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    documents = [json.loads(line) for line in body.splitlines()]
    assert set(documents[-1]) == {"_trailer"}
    assert all("_trailer" not in d for d in documents[:-1])
    return documents[:-1], documents[-1]["_trailer"]


def scalar(session: Session, sql: str, **params: Any) -> int:
    return int(session.execute(text(sql), params).scalar_one())


class TestCsv:
    def test_formula_cells_are_neutralised(self, client: TestClient, book: Book) -> None:
        rows, _ = parse_csv(export(client, book.finance, "recharges", "csv", user_id=book.alice.id))
        reasons = {r["reason"] for r in rows}
        assert reasons == {"'" + f for f in FORMULAS} | {"monthly"}
        assert {r["reference"] for r in rows if r["reference"]} == {f"'-ref{i}" for i in range(4)}
        # Numbers stay numbers (a negative amount is a number, not a formula).
        ledger_rows, _ = parse_csv(export(client, book.finance, "ledger", "csv", user_id=book.alice.id))
        assert any(r["amount"].startswith("-") and int(r["amount"]) < 0 for r in ledger_rows)
        # Every text cell of every log is safe.
        for log in LOGS:
            for row in parse_csv(export(client, book.finance, log, "csv"))[0]:
                for value in row.values():
                    assert not value or value[0] not in "=+-@\t\r" or value.lstrip("-").isdigit(), (log, value)
        # JSONL carries the text as it is.
        documents, _ = parse_jsonl(export(client, book.finance, "recharges", "jsonl", user_id=book.alice.id))
        assert {d["reason"] for d in documents} == {*FORMULAS, "monthly"}

    def test_header_and_timestamps(self, client: TestClient, book: Book) -> None:
        body = export(client, book.finance, "ledger", "csv")
        assert body.splitlines()[0].split(",") == [c.name for c in logs.LEDGER.columns]
        rows, _ = parse_csv(body)
        assert all(r["created_at"].endswith("Z") and "T" in r["created_at"] for r in rows)


class TestNoKeyMaterial:
    def test_no_key_or_hash_in_any_export(
        self, client: TestClient, session: Session, settings: Settings, book: Book
    ) -> None:
        audit_service.record(
            session,
            context=None,
            action="test.sensitive",
            target_type="tenant",
            target_id=book.tenant_a.id,
            tenant_id=book.tenant_a.id,
            after={"secret": "s3cr3t-value", "password": "hunter2-value", "key_hash": "deadbeef-value"},
        )
        session.commit()
        secrets = [book.finance.key, book.admin_a.key, book.operator.key, "s3cr3t-value", "hunter2", "deadbeef"]
        for digest in session.execute(text("SELECT secret_hash FROM api_keys")).scalars():
            secrets += [bytes(digest).hex(), "\\x" + bytes(digest).hex()]
        for digest in session.execute(
            text("SELECT password_hash FROM users WHERE password_hash IS NOT NULL")
        ).scalars():
            secrets.append(str(digest))
        for log in LOGS:
            for fmt in ("csv", "jsonl"):
                body = export(client, book.finance, log, fmt)
                for secret in secrets:
                    assert secret not in body, (log, fmt)
                assert "secret" not in body.lower(), (log, fmt)
                assert "password" not in body.lower(), (log, fmt)


class TestTrailer:
    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_totals_equal_the_database(self, client: TestClient, session: Session, book: Book, fmt: str) -> None:
        parse = parse_csv if fmt == "csv" else parse_jsonl
        rows, trailer = parse(export(client, book.finance, "ledger", fmt))
        assert int(trailer["rows"]) == len(rows) == scalar(session, "SELECT count(*) FROM ledger_entries")
        assert int(trailer["amount"]) == sum(int(r["amount"]) for r in rows) == 0
        tracked = scalar(session, "SELECT sum(balance) FROM ledger_accounts WHERE balance_tracked")
        assert int(trailer["tracked_amount"]) == int(trailer["tracked_balance"]) == tracked
        assert trailer["as_of"].endswith("Z")

        rows, trailer = parse(export(client, book.finance, "recharges", fmt))
        expected = session.execute(
            text(
                "SELECT count(*), sum(e.amount) FROM ledger_entries e JOIN ledger_transactions t "
                "ON t.id = e.transaction_id WHERE t.kind = 'recharge' AND e.amount > 0"
            )
        ).one()
        assert (
            (int(trailer["rows"]), int(trailer["amount"]))
            == tuple(expected)
            == (len(rows), sum(int(r["amount"]) for r in rows))
        )

        rows, trailer = parse(export(client, book.finance, "usage", fmt))
        held, captured = session.execute(
            text(
                "SELECT sum(h.amount), sum(coalesce(h.captured_amount, 0)) FROM jobs j JOIN holds h ON h.id = j.hold_id"
            )
        ).one()
        assert (int(trailer["held"]), int(trailer["captured"])) == (held, captured)
        assert int(trailer["released"]) == sum(int(r["released"]) for r in rows) == 1
        assert int(trailer["rows"]) == len(rows) == 4

        rows, trailer = parse(export(client, book.finance, "audit", fmt))
        assert int(trailer["rows"]) == len(rows) == scalar(session, "SELECT count(*) FROM audit_events")

    def test_tenant_export_totals(self, client: TestClient, session: Session, book: Book) -> None:
        rows, trailer = parse_jsonl(export(client, book.admin_a, "ledger", "jsonl"))
        balance = scalar(
            session,
            "SELECT sum(balance) FROM ledger_accounts WHERE balance_tracked AND tenant_id = :t",
            t=book.tenant_a.id,
        )
        assert trailer["tracked_amount"] == trailer["tracked_balance"] == balance == sum(r["amount"] for r in rows)
        assert {r["tenant_id"] for r in rows} == {book.tenant_a.id}

    def test_filters_apply_to_exports(self, client: TestClient, book: Book) -> None:
        rows, trailer = parse_jsonl(export(client, book.finance, "ledger", "jsonl", kind="capture"))
        assert {r["kind"] for r in rows} == {"capture"}
        assert trailer["rows"] == len(rows) == 4
        rows, trailer = parse_jsonl(export(client, book.finance, "recharges", "jsonl", batch_id=book.batch_a))
        assert [r["batch_id"] for r in rows] == [book.batch_a]
        rows, trailer = parse_csv(export(client, book.finance, "ledger", "csv", **{"from": "2999-01-01T00:00:00Z"}))
        assert (rows, trailer["rows"], trailer["amount"]) == ([], "0", "0")


def _settle(factory: sessionmaker[Session], accounts: list[int], stop: threading.Event, done: list[int]) -> None:
    """reserve + capture (each committed) in a loop through billing.ledger.service."""
    with factory() as session:
        i = 0
        while not stop.is_set():
            i += 1
            hold = ledger_holds.reserve(
                session,
                account_id=accounts[i % len(accounts)],
                amount=1,
                reference=f"settle-{uuid.uuid4().hex}",
                ttl_seconds=60,
            )
            session.commit()
            ledger_holds.capture(session, hold_id=hold.hold_id)
            session.commit()
            done.append(i)


@pytest.fixture
def settling(engine: Engine, session: Session, session_factory: sessionmaker[Session]) -> Iterator[list[int]]:
    tenant = create_tenant(session)
    users = [create_user(session, tenant=tenant) for _ in range(4)]
    for user in users:
        fund(session, account_id=user.account_id, amount=100_000)
    stop, done = threading.Event(), []
    thread = threading.Thread(target=_settle, args=(session_factory, [u.account_id for u in users], stop, done))
    thread.start()
    _wait(done, 20)
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=30)


def _wait(done: list[int], more: int) -> None:
    target = len(done) + more
    deadline = time.monotonic() + 30
    while len(done) < target:
        assert time.monotonic() < deadline, "the settlement thread stalled"
        time.sleep(0.005)


def check_ledger_export(rows: list[dict[str, Any]], trailer: dict[str, Any]) -> None:
    """Internally consistent: the trailer counts the rows, every transaction sums to zero, each tracked account's
    last balance_after is the sum of its exported amounts, and those sums are the accounts' balances then."""
    assert int(trailer["rows"]) == len(rows)
    assert sum(int(r["amount"]) for r in rows) == int(trailer["amount"]) == 0
    per_txn: dict[str, int] = defaultdict(int)
    per_account: dict[str, int] = defaultdict(int)
    last: dict[str, int] = {}
    for r in rows:
        per_txn[str(r["transaction_id"])] += int(r["amount"])
        if r["account_kind"] != "system":
            per_account[str(r["account_id"])] += int(r["amount"])
            last[str(r["account_id"])] = int(r["balance_after"])
    assert set(per_txn.values()) == {0}
    assert last == dict(per_account)
    assert sum(per_account.values()) == int(trailer["tracked_amount"]) == int(trailer["tracked_balance"])


class TestConsistentSnapshot:
    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_export_while_settling(self, engine: Engine, session: Session, settling: list[int], fmt: str) -> None:
        filters = service.Filters()
        stream = ExportStream(engine, log=logs.LEDGER, filters=filters, fmt=fmt, chunk_bytes=512)  # type: ignore[arg-type]
        chunks = stream.open()
        body = [next(chunks), next(chunks)]
        # More settlements commit while the export is half read: none of them may appear in it.
        _wait(settling, 30)
        body += list(chunks)
        text_body = b"".join(body).decode()
        rows, trailer = parse_csv(text_body) if fmt == "csv" else parse_jsonl(text_body)
        check_ledger_export(rows, trailer)
        assert scalar(session, "SELECT count(*) FROM ledger_entries") > len(rows)
        assert engine.pool.checkedout() <= 2  # the export's connection went back (the settler holds one)

    def test_http_exports_while_settling(
        self, client: TestClient, make_caller: MakeCaller, settling: list[int]
    ) -> None:
        finance = make_caller(Role.finance)
        for fmt in ("csv", "jsonl", "csv"):
            body = export(client, finance, "ledger", fmt)
            rows, trailer = parse_csv(body) if fmt == "csv" else parse_jsonl(body)
            check_ledger_export(rows, trailer)
            _wait(settling, 5)

    def test_abandoned_export_releases_its_connection(self, engine: Engine, book: Book) -> None:
        before = engine.pool.checkedout()
        stream = ExportStream(engine, log=logs.LEDGER, filters=service.Filters(), fmt="csv", chunk_bytes=64)
        chunks = stream.open()
        next(chunks)
        next(chunks)
        chunks.close()  # the client went away mid-stream
        assert engine.pool.checkedout() == before
        # The database is fine afterwards.
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1


class TestCli:
    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_cli_export_writes_a_file(
        self, settings: Settings, session: Session, book: Book, tmp_path: Path, fmt: str
    ) -> None:
        assert settings.jwt_secret is not None
        assert settings.api_key_pepper is not None
        env = {
            "FACEMINT_ENV": "dev",
            "FACEMINT_DATABASE_URL": settings.database_url,
            "FACEMINT_REDIS_URL": settings.redis_url,
            "FACEMINT_JWT_SECRET": settings.jwt_secret.get_secret_value(),
            "FACEMINT_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value(),
        }
        out = tmp_path / f"ledger.{fmt}"
        try:
            result = CliRunner().invoke(
                cli, ["export", "ledger", "--format", fmt, "-o", str(out), "--from", "2000-01-01"], env=env
            )
            assert result.exit_code == 0, result.output
            tenant = CliRunner().invoke(
                cli,
                ["export", "usage", "--format", fmt, "-o", str(tmp_path / "t"), "--tenant-id", str(book.tenant_b.id)],
                env=env,
            )
            assert tenant.exit_code == 0, tenant.output
        finally:
            get_settings.cache_clear()
        body = out.read_text()
        rows, trailer = parse_csv(body) if fmt == "csv" else parse_jsonl(body)
        check_ledger_export(rows, trailer)
        assert int(trailer["rows"]) == scalar(session, "SELECT count(*) FROM ledger_entries")
        usage, _ = (
            parse_csv((tmp_path / "t").read_text()) if fmt == "csv" else parse_jsonl((tmp_path / "t").read_text())
        )
        assert {int(r["tenant_id"]) for r in usage} == {book.tenant_b.id}
