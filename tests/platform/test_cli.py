"""The `facemint` command line, run in-process with click's CliRunner against the test servers; `facemint
recharge` talks to a real API server on loopback."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import Session

from facemint.app import create_app
from facemint.auth.passwords import verify_password
from facemint.cli.main import cli
from facemint.config import Settings, get_settings
from facemint.db import sqlalchemy_url
from facemint.migrate import alembic_config
from facemint.users.orm import Role
from tests.factories import bearer, create_tenant, create_user, fund
from tests.platform.recharge_helpers import balance_of, count, recharge_transactions, staff

ADMIN_PASSWORD = "first-password-123"


@pytest.fixture
def cli_env(settings: Settings) -> Iterator[dict[str, str | None]]:
    """The environment a CLI run sees: the test servers and the test settings' secrets."""
    assert settings.jwt_secret is not None
    assert settings.api_key_pepper is not None
    yield {
        "FACEMINT_ENV": "dev",
        "FACEMINT_DATABASE_URL": settings.database_url,
        "FACEMINT_REDIS_URL": settings.redis_url,
        "FACEMINT_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "FACEMINT_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value(),
        "FACEMINT_API_URL": None,
        "FACEMINT_API_KEY": None,
    }
    get_settings.cache_clear()  # the CLI cached settings read from this environment


def invoke(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("unused")).get_current_head()
    assert head is not None
    return head


class TestMigrate:
    def test_migrate_builds_a_fresh_database_and_is_idempotent(
        self, cli_env: dict[str, str | None], database_url: str
    ) -> None:
        name = f"facemint_cli_{uuid.uuid4().hex[:10]}"
        admin = create_engine(sqlalchemy_url(database_url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        base, _, query = database_url.partition("?")
        fresh_url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
        fresh = create_engine(sqlalchemy_url(fresh_url))
        try:
            env = {**cli_env, "FACEMINT_DATABASE_URL": fresh_url}
            for _ in range(2):
                result = invoke(env, "migrate")
                assert result.exit_code == 0, result.output
                assert "migrations applied" in result.stderr
                assert result.stdout == ""
            tables = set(inspect(fresh).get_table_names())
            assert {"users", "tenants", "api_keys", "ledger_accounts", "ledger_entries", "recharge_batches"} <= tables
            with fresh.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _alembic_head()
                # The system accounts are seeded once, not once per run.
                assert conn.execute(text("SELECT count(*) FROM ledger_accounts")).scalar_one() == 3
        finally:
            fresh.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    def test_migrate_on_an_up_to_date_database(self, cli_env: dict[str, str | None], engine: Engine) -> None:
        result = invoke(cli_env, "migrate")
        assert result.exit_code == 0, result.output
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _alembic_head()


class TestAdmin:
    def test_bootstrap_creates_then_updates_one_admin(self, cli_env: dict[str, str | None], session: Session) -> None:
        created = invoke(cli_env, "admin", "bootstrap", "--email", "Root@Example.test", "--password", ADMIN_PASSWORD)
        assert created.exit_code == 0, created.output
        assert "created" in created.stderr
        updated = invoke(cli_env, "admin", "bootstrap", "--email", "root@example.test", "--password", "second-pass-456")
        assert updated.exit_code == 0, updated.output
        assert "updated" in updated.stderr
        rows = session.execute(
            text("SELECT email, role, status, tenant_id, password_hash FROM users WHERE role = 'platform_admin'")
        ).all()
        assert len(rows) == 1
        [admin] = rows
        assert (admin.email, admin.status, admin.tenant_id) == ("root@example.test", "active", None)
        assert verify_password(admin.password_hash, "second-pass-456")
        assert not verify_password(admin.password_hash, ADMIN_PASSWORD)

    def test_bootstrap_refuses_short_passwords_and_other_roles(
        self, cli_env: dict[str, str | None], session: Session
    ) -> None:
        short = invoke(cli_env, "admin", "bootstrap", "--email", "root@example.test", "--password", "short")
        assert short.exit_code != 0
        assert "8 characters" in short.output
        member = create_user(session, password=None)
        promote = invoke(cli_env, "admin", "bootstrap", "--email", member.email, "--password", ADMIN_PASSWORD)
        assert promote.exit_code == 1
        assert "refusing" in promote.stderr
        assert session.execute(text("SELECT count(*) FROM users WHERE role = 'platform_admin'")).scalar_one() == 0

    def test_create_key_prints_only_a_working_key(self, cli_env: dict[str, str | None], settings: Settings) -> None:
        email = "keys@example.test"
        assert invoke(cli_env, "admin", "bootstrap", "--email", email, "--password", ADMIN_PASSWORD).exit_code == 0
        result = invoke(
            cli_env, "admin", "create-key", "--email", email, "--scope", "tenants:read", "--scope", "recharges:write"
        )
        assert result.exit_code == 0, result.output
        key = result.stdout.strip()
        assert result.stdout == key + "\n", "stdout holds the key and nothing else"
        assert re.fullmatch(r"\S+", key)
        with TestClient(create_app(settings)) as client:
            assert client.get("/admin/v1/tenants", headers=bearer(key)).status_code == 200
            # Only the scopes asked for.
            denied = client.get("/admin/v1/users", headers=bearer(key))
            assert denied.status_code == 403
            assert denied.json()["code"] == "insufficient_scope"
            assert client.get("/admin/v1/tenants", headers=bearer(key + "x")).status_code == 401

    def test_create_key_refuses_unknown_scopes_and_users(
        self, cli_env: dict[str, str | None], session: Session
    ) -> None:
        email = "scopes@example.test"
        assert invoke(cli_env, "admin", "bootstrap", "--email", email, "--password", ADMIN_PASSWORD).exit_code == 0
        bad = invoke(cli_env, "admin", "create-key", "--email", email, "--scope", "tenants:read", "--scope", "root")
        assert bad.exit_code != 0
        assert bad.stdout == ""
        assert "root" in bad.stderr
        assert "tenants:read" in bad.stderr, "the message lists the known scopes"
        nobody = invoke(cli_env, "admin", "create-key", "--email", "nobody@example.test", "--scope", "tenants:read")
        assert nobody.exit_code == 1
        assert "no user" in nobody.stderr
        assert count(session, "api_keys") == 0

    def test_create_key_refuses_scopes_beyond_the_role(self, cli_env: dict[str, str | None], session: Session) -> None:
        member = create_user(session, password=None)
        result = invoke(cli_env, "admin", "create-key", "--email", member.email, "--scope", "recharges:write")
        assert result.exit_code != 0
        assert result.stdout == ""
        assert count(session, "api_keys") == 0


class TestReconcile:
    def test_a_healthy_ledger_reconciles(self, cli_env: dict[str, str | None], session: Session) -> None:
        user = create_user(session, password=None)
        fund(session, account_id=user.account_id, amount=40)
        result = invoke(cli_env, "reconcile")
        assert result.exit_code == 0, result.output
        assert "the books balance" in result.stdout
        assert "DISCREPANCY" not in result.stdout
        as_json = invoke(cli_env, "reconcile", "--json")
        assert as_json.exit_code == 0
        report = json.loads(as_json.stdout)
        assert report["balanced"] is True
        assert report["discrepancies"] == []
        assert report["totals"]["issued"] == 40
        assert report["totals"]["outstanding"] == 40

    @pytest.mark.no_invariants
    def test_a_planted_discrepancy_is_reported(
        self, cli_env: dict[str, str | None], session: Session, engine: Engine
    ) -> None:
        user = create_user(session, password=None)
        fund(session, account_id=user.account_id, amount=40)
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(
                text("UPDATE ledger_accounts SET balance = balance + 7 WHERE id = :id"), {"id": user.account_id}
            )
        result = invoke(cli_env, "reconcile")
        assert result.exit_code == 1, result.output
        assert re.search(rf"DISCREPANCY balance_mismatch: .*ids \[{user.account_id}\] details \[7\]", result.stdout)
        assert "tokens_not_conserved" in result.stdout
        assert "the books balance" not in result.stdout
        report = json.loads(invoke(cli_env, "reconcile", "--json").stdout)
        assert report["balanced"] is False
        mismatch = next(d for d in report["discrepancies"] if d["check"] == "balance_mismatch")
        assert (mismatch["ids"], mismatch["details"]) == ([user.account_id], [7])


# --- facemint recharge, against a live server ---------------------------------------------------------


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    """The API served by uvicorn on a free loopback port, in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the API server stopped while starting"
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "the API server did not stop"


@pytest.fixture
def recharge_env(cli_env: dict[str, str | None], api_url: str, session: Session, settings: Settings) -> dict:
    operator = staff(session, settings, Role.operator)
    return {**cli_env, "FACEMINT_API_URL": api_url, "FACEMINT_API_KEY": operator.key}


def _csv(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / f"recharge-{uuid.uuid4().hex[:6]}.csv"
    path.write_text("\n".join(("email,amount,reference", *lines)) + "\n")
    return path


class TestRechargeCommand:
    def test_applies_once_and_says_so_the_second_time(
        self, recharge_env: dict, session: Session, tmp_path: Path
    ) -> None:
        tenant = create_tenant(session)
        u1, u2 = (create_user(session, tenant=tenant, password=None) for _ in range(2))
        path = _csv(tmp_path, f"{u1.email},10,a", f"{u2.email},20,b")
        args = ("recharge", str(path), "--mode", "atomic", "--reason", "November")
        first = invoke(recharge_env, *args)
        assert first.exit_code == 0, first.output
        assert re.search(r"batch \d+: applied 2 of 2 rows, 30 tokens; 0 failed", first.stdout), first.stdout
        second = invoke(recharge_env, *args)
        assert second.exit_code == 0, second.output
        assert "already applied 2 of 2 rows" in second.stdout
        assert (balance_of(session, u1.account_id), balance_of(session, u2.account_id)) == (10, 20)
        assert count(session, "recharge_batches") == 1
        assert recharge_transactions(session) == 1
        reason = session.execute(text("SELECT reason FROM recharge_batches")).scalar_one()
        assert reason == "November"

    def test_dry_run_applies_nothing(self, recharge_env: dict, session: Session, tmp_path: Path) -> None:
        user = create_user(session, password=None)
        path = _csv(tmp_path, f"{user.email},10,")
        result = invoke(recharge_env, "recharge", str(path), "--mode", "atomic", "--reason", "R", "--dry-run")
        assert result.exit_code == 0, result.output
        assert "would apply 1 of 1 rows, 10 tokens" in result.stdout
        assert balance_of(session, user.account_id) == 0
        assert count(session, "recharge_batches") == 0

    def test_atomic_with_a_bad_row_exits_2_and_applies_nothing(
        self, recharge_env: dict, session: Session, tmp_path: Path
    ) -> None:
        user = create_user(session, password=None)
        path = _csv(tmp_path, f"{user.email},10,", "ghost@example.test,5,")
        result = invoke(recharge_env, "recharge", str(path), "--mode", "atomic", "--reason", "R")
        assert result.exit_code == 2, result.output
        assert "422 batch_rejected" in result.stderr
        assert "row 2: unknown_user" in result.stderr
        assert balance_of(session, user.account_id) == 0
        assert count(session, "recharge_batches") == 0

    def test_partial_with_a_bad_row_exits_3(self, recharge_env: dict, session: Session, tmp_path: Path) -> None:
        user = create_user(session, password=None)
        path = _csv(tmp_path, "ghost@example.test,5,", f"{user.email},10,")
        result = invoke(recharge_env, "recharge", str(path), "--mode", "partial", "--reason", "R")
        assert result.exit_code == 3, result.output
        assert "applied 1 of 2 rows, 10 tokens; 1 failed" in result.stdout
        assert "row 1: unknown_user" in result.stdout
        assert balance_of(session, user.account_id) == 10
        again = invoke(recharge_env, "recharge", str(path), "--mode", "partial", "--reason", "R")
        assert again.exit_code == 3
        assert "already applied 1 of 2 rows" in again.stdout
        assert balance_of(session, user.account_id) == 10

    def test_needs_an_api_key_and_a_reachable_server(
        self, cli_env: dict[str, str | None], tmp_path: Path, session: Session
    ) -> None:
        path = _csv(tmp_path, "someone@example.test,5,")
        no_key = invoke(cli_env, "recharge", str(path), "--mode", "atomic", "--reason", "R")
        assert no_key.exit_code == 1
        assert "FACEMINT_API_KEY" in no_key.stderr
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        env = {**cli_env, "FACEMINT_API_URL": f"http://127.0.0.1:{port}", "FACEMINT_API_KEY": "fmk_x"}
        unreachable = invoke(env, "recharge", str(path), "--mode", "atomic", "--reason", "R")
        assert unreachable.exit_code == 1
        assert "could not reach" in unreachable.stderr
