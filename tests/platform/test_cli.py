"""The `facemint` command line, run in-process with click's CliRunner against the test servers; `facemint
recharge` talks to a real API server on loopback."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner, Result
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, inspect, make_url, text
from sqlalchemy.orm import Session

from facemint import embedded
from facemint.app import create_app
from facemint.auth.passwords import verify_password
from facemint.cli.main import cli
from facemint.config import DEV_JWT_SECRET, Environment, Settings, get_settings
from facemint.db import sqlalchemy_url
from facemint.migrate import alembic_config
from facemint.users.orm import Role
from tests.factories import bearer, create_tenant, create_user, fund
from tests.platform.recharge_helpers import balance_of, count, recharge_transactions, staff

ADMIN_PASSWORD = "first-password-123"


@pytest.fixture
def cli_env(settings: Settings, owner_url: str) -> Iterator[dict[str, str | None]]:
    """The environment a CLI run sees: the test servers (the service's role, and the owner for migrations) and
    the test settings' secrets."""
    assert settings.jwt_secret is not None
    assert settings.api_key_pepper is not None
    yield {
        "FACEMINT_ENV": "dev",
        "FACEMINT_DATABASE_URL": settings.database_url,
        "FACEMINT_DATABASE_OWNER_URL": owner_url,
        "FACEMINT_REDIS_URL": settings.redis_url,
        "FACEMINT_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "FACEMINT_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value(),
        "FACEMINT_API_URL": None,
        "FACEMINT_API_KEY": None,
    }
    get_settings.cache_clear()  # the CLI cached settings read from this environment


def invoke(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _on_database(url: str, name: str) -> str:
    """`url` (either role's) pointed at another database on the same server."""
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("unused")).get_current_head()
    assert head is not None
    return head


class TestMigrate:
    def test_migrate_builds_a_fresh_database_and_is_idempotent(
        self, cli_env: dict[str, str | None], database_url: str, owner_url: str
    ) -> None:
        name = f"facemint_cli_{uuid.uuid4().hex[:10]}"
        admin = create_engine(sqlalchemy_url(owner_url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        fresh_owner_url, fresh_url = (_on_database(url, name) for url in (owner_url, database_url))
        fresh = create_engine(sqlalchemy_url(fresh_url))
        try:
            env = {**cli_env, "FACEMINT_DATABASE_URL": fresh_url, "FACEMINT_DATABASE_OWNER_URL": fresh_owner_url}
            for _ in range(2):
                result = invoke(env, "migrate")
                assert result.exit_code == 0, result.output
                assert "migrations applied" in result.stderr
                assert result.stdout == ""
            tables = set(inspect(fresh).get_table_names())
            assert {"users", "tenants", "api_keys", "ledger_accounts", "ledger_entries", "recharge_batches"} <= tables
            with fresh.connect() as conn:
                # The service's role reads what it needs; Alembic's bookkeeping is the owner's.
                # The system accounts only: issuance, usage revenue, adjustments and expired.
                assert conn.execute(text("SELECT count(*) FROM ledger_accounts")).scalar_one() == 4
                assert not conn.execute(text("SELECT has_table_privilege('alembic_version', 'SELECT')")).scalar_one()
            owner = create_engine(sqlalchemy_url(fresh_owner_url))
            with owner.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _alembic_head()
            owner.dispose()
        finally:
            fresh.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    def test_migrate_on_an_up_to_date_database(self, cli_env: dict[str, str | None], owner_engine: Engine) -> None:
        result = invoke(cli_env, "migrate")
        assert result.exit_code == 0, result.output
        with owner_engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _alembic_head()


# --- facemint serve and up: what they listen on, and as whom --------------------------------------------


@dataclass
class Started:
    """What `serve` or `up` would have run: uvicorn's arguments and the worker's environment."""

    uvicorn: list[tuple[object, dict[str, Any]]] = field(default_factory=list)
    worker_env: dict[str, str] | None = None


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[Started]:
    """uvicorn.run and the worker subprocess replaced by recorders: the commands return instead of serving."""
    import subprocess

    import facemint.cli.main as cli_main

    record = Started()

    def run(app: object, **kwargs: Any) -> None:
        record.uvicorn.append((app, kwargs))

    class Worker:
        pid = 0

        def __init__(self, argv: list[str], *, env: dict[str, str]) -> None:
            record.worker_env = env

        def terminate(self) -> None: ...
        def kill(self) -> None: ...
        def wait(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(cli_main, "subprocess", SimpleNamespace(Popen=Worker, TimeoutExpired=subprocess.TimeoutExpired))
    yield record
    for app, _ in record.uvicorn:
        if isinstance(app, FastAPI):
            app.state.engine.dispose()


def _without_secrets(env: dict[str, str | None]) -> dict[str, str | None]:
    return {**env, "FACEMINT_JWT_SECRET": None, "FACEMINT_API_KEY_PEPPER": None}


class TestServe:
    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "192.0.2.10", "api.example.test"])
    def test_refuses_the_builtin_secrets_beyond_loopback(
        self, cli_env: dict[str, str | None], started: Started, host: str
    ) -> None:
        result = invoke(_without_secrets(cli_env), "serve", "--host", host)
        assert result.exit_code == 1
        assert result.stderr.startswith(f"error: refusing to listen on {host} with the built-in development secrets")
        assert result.stderr.count("\n") == 1
        assert started.uvicorn == []

    def test_refuses_the_builtin_secrets_even_when_set_explicitly(
        self, cli_env: dict[str, str | None], started: Started
    ) -> None:
        env = {**cli_env, "FACEMINT_JWT_SECRET": DEV_JWT_SECRET}
        result = invoke(env, "serve", "--host", "0.0.0.0")
        assert result.exit_code == 1
        assert "built-in development secrets" in result.stderr
        assert started.uvicorn == []

    @pytest.mark.parametrize("host", [None, "127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
    def test_serves_loopback_with_the_builtin_secrets(
        self, cli_env: dict[str, str | None], started: Started, host: str | None
    ) -> None:
        result = invoke(_without_secrets(cli_env), "serve", *(["--host", host] if host is not None else []))
        assert result.exit_code == 0, result.output
        [(_, kwargs)] = started.uvicorn
        assert kwargs["host"] == (host or "127.0.0.1")

    def test_serves_every_interface_in_prod_with_real_secrets(
        self, cli_env: dict[str, str | None], started: Started
    ) -> None:
        result = invoke({**cli_env, "FACEMINT_ENV": None}, "serve", "--host", "0.0.0.0", "--port", "8000")
        assert result.exit_code == 0, result.output
        [(app, kwargs)] = started.uvicorn
        assert (app, kwargs["host"], kwargs["port"]) == ("facemint.app:create_app", "0.0.0.0", 8000)

    def test_access_lines_leave_out_the_query_string(self, cli_env: dict[str, str | None], started: Started) -> None:
        assert invoke(cli_env, "serve").exit_code == 0
        [(_, kwargs)] = started.uvicorn
        config = kwargs["log_config"]
        [name] = config["loggers"]["uvicorn.access"]["filters"]
        access_filter = config["filters"][name]["()"]
        module, _, attribute = access_filter.rpartition(".")
        record = logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("10.0.0.1:5000", "POST", "/admin/v1/recharges/batch?reason=payroll-secret&mode=atomic", "1.1", 201),
            None,
        )
        assert getattr(importlib.import_module(module), attribute)().filter(record)
        assert record.getMessage() == '10.0.0.1:5000 - "POST /admin/v1/recharges/batch HTTP/1.1" 201'


class TestUp:
    def test_runs_in_development_mode_as_the_service_role(
        self, cli_env: dict[str, str | None], started: Started, settings: Settings, tmp_path: Path
    ) -> None:
        """With a database configured the settings default to prod; `up` is explicitly dev, worker included."""
        env = {**cli_env, "FACEMINT_ENV": None, "FACEMINT_DATA_DIR": str(tmp_path)}
        result = invoke(env, "up", "--no-demo")
        assert result.exit_code == 0, result.output
        [(app, kwargs)] = started.uvicorn
        assert isinstance(app, FastAPI)
        assert kwargs["log_config"]["loggers"]["uvicorn.access"]["filters"], "access lines without query strings"
        assert app.state.settings.env is Environment.dev
        assert app.state.settings.database_url == settings.database_url
        assert started.worker_env is not None
        assert started.worker_env["FACEMINT_ENV"] == "dev"
        assert started.worker_env["FACEMINT_DATABASE_URL"] == settings.database_url
        assert "FACEMINT_DATABASE_OWNER_URL" not in started.worker_env

    def test_the_embedded_servers_are_migrated_by_the_owner_and_used_as_the_service_role(
        self, started: Started, tmp_path: Path
    ) -> None:
        env = {name: None for name in os.environ if name.startswith("FACEMINT_")}
        result = invoke({**env, "FACEMINT_DATA_DIR": str(tmp_path)}, "up")
        assert result.exit_code == 0, result.output
        assert "Demo Co" in result.output  # the demo was seeded, as the service's role
        assert "Admin console: http://" in result.output
        assert "ops2@facemint.local" in result.output  # a second operator, to approve what the first requests
        [(app, _)] = started.uvicorn
        assert isinstance(app, FastAPI)
        assert started.worker_env is not None
        assert started.worker_env["FACEMINT_DATABASE_URL"] == app.state.settings.database_url
        assert make_url(app.state.settings.database_url).username == embedded.APP_LOGIN
        assert started.worker_env["FACEMINT_ENV"] == "dev"

    def test_refuses_the_builtin_secrets_beyond_loopback(
        self, cli_env: dict[str, str | None], started: Started
    ) -> None:
        result = invoke(_without_secrets(cli_env), "up", "--host", "0.0.0.0")
        assert result.exit_code == 1
        assert "built-in development secrets" in result.stderr
        assert started.uvicorn == []
        assert started.worker_env is None


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
        self, cli_env: dict[str, str | None], session: Session, owner_engine: Engine
    ) -> None:
        user = create_user(session, password=None)
        fund(session, account_id=user.account_id, amount=40)
        with owner_engine.begin() as conn:
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

    def test_a_batch_held_for_approval_exits_4_then_reports_the_applied_batch(
        self, recharge_env: dict, api_url: str, session: Session, settings: Settings, tmp_path: Path
    ) -> None:
        user = create_user(session, password=None)
        path = _csv(tmp_path, f"{user.email},{settings.approval_threshold_amount + 1},big")
        args = ("recharge", str(path), "--mode", "atomic", "--reason", "quarterly top-up")
        held = invoke(recharge_env, *args)
        assert held.exit_code == 4, held.output
        match = re.search(r"held for approval (\d+) \(pending\)", held.stderr)
        assert match, held.stderr
        assert "nothing is applied until then" in held.stderr
        assert balance_of(session, user.account_id) == 0
        assert invoke(recharge_env, *args).exit_code == 4  # still waiting: the same answer, nothing applied

        approver = staff(session, settings, Role.operator)
        approved = httpx.post(
            f"{api_url}/admin/v1/recharge-approvals/{match.group(1)}/approve", headers=bearer(approver.key), timeout=30
        )
        assert approved.status_code == 200, approved.text
        after = invoke(recharge_env, *args)
        assert after.exit_code == 0, after.output
        assert "already applied 1 of 1 rows" in after.stdout
        assert balance_of(session, user.account_id) == settings.approval_threshold_amount + 1

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
