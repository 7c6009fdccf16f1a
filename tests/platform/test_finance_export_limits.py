"""Finance exports under limits: concurrent streams capped per tenant and in total (429), a time limit on each
export's snapshot (cut without a trailer), and a client that goes away ending its export's transaction at once.

Big exports come from one recharge of many legs with a long reason (tens of MB of CSV), so a client that stops
reading leaves the COPY blocked on full buffers; a snapshot still computing is one whose query waits on a lock."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from facemint import slots
from facemint.app import create_app
from facemint.cli.main import cli
from facemint.config import Settings, get_settings
from facemint.finance import export_limits, logs, service
from facemint.finance.exports import (
    APPLICATION_NAME,
    CSV_TRAILER_MARK,
    ExportAborted,
    ExportStream,
    ExportTimedOut,
    snapshot_setup_sql,
)
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from tests.conftest import make_settings
from tests.factories import bearer, create_tenant, create_user, issue_key

FINANCE = "/admin/v1/finance"


# --- helpers ------------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(interval)


def export_backends(engine: Engine) -> list[dict[str, Any]]:
    """The backends serving an export now (the export's transaction names itself)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT pid, state, wait_event_type, wait_event, backend_xmin FROM pg_stat_activity "
                "WHERE application_name = :name"
            ),
            {"name": APPLICATION_NAME},
        )
        return [dict(row) for row in rows.mappings()]


def in_use(engine: Engine) -> int:
    """Connections checked out of the pool."""
    assert isinstance(engine.pool, QueuePool)
    return engine.pool.checkedout()


def held_slots(redis: Redis, pool: str = "exports:all") -> int:
    return int(redis.zcard(slots.Pool(name=pool, limit=1, what="").key))


def bulk_ledger(session: Session, *, tenant: Tenant | None, entries: int, reason_bytes: int) -> None:
    """One recharge from issuance of one token to each of `entries` new user accounts (of `tenant`), its reason
    `reason_bytes` long: a ledger export of about entries x reason_bytes, made in two statements."""
    accounts = (
        session.execute(
            text(
                "INSERT INTO ledger_accounts (kind, tenant_id, balance_tracked) "
                "SELECT 'user', :tenant_id, true FROM generate_series(1, :n) RETURNING id"
            ),
            {"tenant_id": tenant.id if tenant else None, "n": entries},
        )
        .scalars()
        .all()
    )
    issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
    ledger.post(
        session,
        kind=TransactionKind.recharge,
        legs=[(issuance, -entries), *((account, 1) for account in accounts)],
        idempotency_key=f"bulk-{accounts[0]}",
        request_hash=b"bulk",
        tenant_id=tenant.id if tenant else None,
        actor="test",
        reason="r" * reason_bytes,
    )
    session.commit()


@dataclass
class Live:
    url: str
    settings: Settings

    def export_url(self, log: str = "ledger") -> str:
        return f"{self.url}{FINANCE}/{log}/export"


@contextmanager
def serve(settings: Settings) -> Iterator[Live]:
    """The API behind a real uvicorn server on a free loopback port, in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="critical", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=15)
        assert thread.is_alive(), "the API server stopped while starting"
        yield Live(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def stalling_client() -> httpx.Client:
    """An HTTP client with a small fixed receive buffer: one that stops reading soon stops the server sending (the
    kernel would otherwise grow a loopback socket's buffer to tens of MB and take a whole export in)."""
    options = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)]
    return httpx.Client(timeout=30, transport=httpx.HTTPTransport(socket_options=options))


@contextmanager
def locked(session_factory: sessionmaker[Session], table: str) -> Iterator[None]:
    """`table` locked against readers until the block ends: an export's query then waits, still computing."""
    with session_factory() as holder:
        holder.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            holder.rollback()


def read_into(parts: list[bytes], chunks: Iterable[bytes]) -> None:
    """Read to the end, keeping what arrives (even when the end is an error)."""
    for chunk in chunks:
        parts.append(chunk)


def has_trailer(body: bytes) -> bool:
    last = body.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return last.startswith(CSV_TRAILER_MARK.encode()) or last.startswith(b'{"_trailer"')


def live_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    return make_settings(database_url, redis_url, **overrides)


@dataclass
class People:
    finance: dict[str, str]
    operator: dict[str, str]
    admin_a: dict[str, str]
    admin_b: dict[str, str]
    tenant_a: Tenant


@pytest.fixture
def people(session: Session, settings: Settings) -> People:
    tenant_a, tenant_b = create_tenant(session), create_tenant(session)

    def key(role: Role, tenant: Tenant | None = None) -> dict[str, str]:
        return bearer(issue_key(session, settings, create_user(session, tenant=tenant, role=role)))

    return People(
        finance=key(Role.finance),
        operator=key(Role.operator),
        admin_a=key(Role.tenant_admin, tenant_a),
        admin_b=key(Role.tenant_admin, tenant_b),
        tenant_a=tenant_a,
    )


@pytest.fixture
def big(session: Session, people: People) -> None:
    """About 30 MB of tenant A's ledger as CSV."""
    bulk_ledger(session, tenant=people.tenant_a, entries=20_000, reason_bytes=1500)


def assert_too_many(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) == export_limits.RETRY_AFTER_SECONDS
    problem = response.json()
    assert problem["code"] == "too_many_exports"
    assert problem["limit"] == limit


# --- caps ---------------------------------------------------------------------------------------------------


class TestCaps:
    def test_per_tenant_cap_holds_while_streams_are_open(
        self, database_url: str, redis_url: str, engine: Engine, redis_client: Redis, people: People, big: None
    ) -> None:
        settings = live_settings(database_url, redis_url, export_max_concurrent_per_tenant=2)
        with serve(settings) as live, stalling_client() as http:
            # Two of tenant A's exports open, their clients not reading: each holds its slot and its snapshot.
            first = http.send(http.build_request("GET", live.export_url(), headers=people.admin_a), stream=True)
            second = http.send(http.build_request("GET", live.export_url(), headers=people.admin_a), stream=True)
            try:
                assert (first.status_code, second.status_code) == (200, 200)
                wait_for(lambda: len(export_backends(engine)) == 2, timeout=5)

                refused = http.get(live.export_url(), headers=people.admin_a)
                assert_too_many(refused, limit=2)
                assert len(export_backends(engine)) == 2  # the refusal started nothing
                # Another tenant has its own allowance.
                other = http.get(live.export_url("audit"), headers=people.admin_b)
                assert other.status_code == 200, other.text
            finally:
                first.close()
                second.close()
            # Once they end (the clients went away), the slots are free again.
            wait_for(lambda: held_slots(redis_client) == 0, timeout=5)
            again = http.get(live.export_url("audit"), headers=people.admin_a)
            assert again.status_code == 200, again.text
        assert export_backends(engine) == []

    def test_total_cap_and_staff_as_one_tenant(
        self, database_url: str, redis_url: str, redis_client: Redis, people: People
    ) -> None:
        settings = live_settings(database_url, redis_url, export_max_concurrent_per_tenant=2, export_max_concurrent=3)
        lifetime = export_limits.slot_lifetime(settings)
        staff = export_limits.export_pools(settings, tenant_scope=None)
        with TestClient(create_app(settings)) as client:
            # Two exports by staff, whoever they are, fill the platform's allowance.
            held = [slots.acquire(redis_client, staff, lifetime_seconds=lifetime) for _ in range(2)]
            assert_too_many(client.get(f"{FINANCE}/audit/export", headers=people.finance), limit=2)
            assert_too_many(client.get(f"{FINANCE}/audit/export", headers=people.operator), limit=2)
            # A tenant still has room beside them; once a third export runs anywhere, the total is full and every
            # tenant is refused.
            assert client.get(f"{FINANCE}/audit/export", headers=people.admin_a).status_code == 200
            held.append(
                slots.acquire(
                    redis_client,
                    export_limits.export_pools(settings, tenant_scope=people.tenant_a.id),
                    lifetime_seconds=lifetime,
                )
            )
            refused = client.get(f"{FINANCE}/audit/export", headers=people.admin_b)
            assert_too_many(refused, limit=3)
            assert "on this service" in refused.json()["detail"]
            for lease in held:
                slots.release(redis_client, lease)
            assert client.get(f"{FINANCE}/audit/export", headers=people.admin_b).status_code == 200
            assert client.get(f"{FINANCE}/audit/export", headers=people.finance).status_code == 200
        assert held_slots(redis_client) == 0  # every export that ran released its slot

    def test_slots_lapse_after_the_time_limit_and_margin(
        self, database_url: str, redis_url: str, redis_client: Redis, people: People
    ) -> None:
        settings = live_settings(database_url, redis_url, export_max_seconds=30)
        before = time.time()
        lease = export_limits.take_export_slot(redis_client, settings, tenant_scope=people.tenant_a.id)
        for pool in lease.pools:
            score = redis_client.zscore(pool.key, lease.holder)
            assert score is not None
            lapses_in = score / 1000 - before
            assert 30 + export_limits.SLOT_MARGIN_SECONDS - 2 <= lapses_in <= 30 + export_limits.SLOT_MARGIN_SECONDS + 2
        slots.release(redis_client, lease)

    def test_export_routes_document_the_429(self, app: FastAPI) -> None:
        paths = app.openapi()["paths"]
        for log in logs.LOGS:
            responses = paths[f"{FINANCE}/{log}/export"]["get"]["responses"]
            assert "concurrent exports" in responses["429"]["description"]
            assert set(responses["200"]["content"]) == {"text/csv", "application/x-ndjson"}

    def test_a_refused_filter_releases_its_slot(
        self, database_url: str, redis_url: str, redis_client: Redis, people: People
    ) -> None:
        settings = live_settings(database_url, redis_url)
        with TestClient(create_app(settings)) as client:
            response = client.get(f"{FINANCE}/usage/export", params={"batch_id": 1}, headers=people.finance)
            assert response.status_code == 422
        assert held_slots(redis_client) == 0


# --- disconnects -----------------------------------------------------------------------------------------------


class TestDisconnect:
    def test_disconnect_mid_copy_ends_the_transaction_at_once(
        self, database_url: str, redis_url: str, engine: Engine, redis_client: Redis, people: People, big: None
    ) -> None:
        settings = live_settings(database_url, redis_url)
        with serve(settings) as live, stalling_client() as http:
            with http.stream("GET", live.export_url(), headers=people.finance) as response:
                assert response.status_code == 200
                chunks = response.iter_raw()  # kept: a dropped iterator closes the connection when collected
                assert next(chunks)
                # The client reads no further: the COPY fills every buffer and waits to send, its snapshot open.
                backends = wait_for(
                    lambda: [b for b in export_backends(engine) if b["wait_event"] == "ClientWrite"], timeout=5
                )
                assert backends[0]["backend_xmin"] is not None
                assert held_slots(redis_client) == 1
            # Leaving the block closed the connection, the body unread: the backend is gone within a second.
            wait_for(lambda: export_backends(engine) == [], timeout=1)
            wait_for(lambda: held_slots(redis_client) == 0, timeout=2)

    def test_disconnect_while_the_snapshot_is_computing(
        self,
        database_url: str,
        redis_url: str,
        engine: Engine,
        redis_client: Redis,
        session_factory: sessionmaker[Session],
        people: People,
    ) -> None:
        settings = live_settings(database_url, redis_url)
        with serve(settings) as live, locked(session_factory, "ledger_accounts"):
            host, port = live.url.removeprefix("http://").split(":")
            client = socket.create_connection((host, int(port)))
            try:
                request = (
                    f"GET {FINANCE}/ledger/export HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: {people.finance['Authorization']}\r\n\r\n"
                )
                client.sendall(request.encode())
                # The export's totals wait on the lock: a statement still running, no byte sent yet.
                backends = wait_for(
                    lambda: [b for b in export_backends(engine) if b["wait_event_type"] == "Lock"], timeout=5
                )
                assert len(backends) == 1
            finally:
                client.close()
            wait_for(lambda: export_backends(engine) == [], timeout=1)
            wait_for(lambda: held_slots(redis_client) == 0, timeout=2)


# --- the time limit -------------------------------------------------------------------------------------------


class TestTimeLimit:
    def test_a_stalled_client_is_cut_at_the_limit_without_a_trailer(
        self, database_url: str, redis_url: str, engine: Engine, redis_client: Redis, people: People, big: None
    ) -> None:
        settings = live_settings(database_url, redis_url, export_max_seconds=1)
        with serve(settings) as live, stalling_client() as http:
            started = time.monotonic()
            with http.stream("GET", live.export_url(), headers=people.admin_a) as response:
                assert response.status_code == 200
                chunks = response.iter_raw()
                body = next(chunks)
                # The client stops reading: the COPY blocks on the pipe until the watchdog ends it.
                assert export_backends(engine)
                wait_for(lambda: export_backends(engine) == [], timeout=3)
                assert time.monotonic() - started >= 0.95  # at the limit, not before
                # What was sent before the cut can still be read; the body then stops short, without a trailer.
                parts = [body]
                with pytest.raises(httpx.RemoteProtocolError):
                    read_into(parts, chunks)
            body = b"".join(parts)
            assert body.startswith(b"entry_id,")
            assert not has_trailer(body)
            assert len(body) < 20_000 * 1500
            wait_for(lambda: held_slots(redis_client) == 0, timeout=2)

    def test_the_limit_before_the_first_byte_answers_503(
        self,
        database_url: str,
        redis_url: str,
        engine: Engine,
        redis_client: Redis,
        session_factory: sessionmaker[Session],
        people: People,
    ) -> None:
        settings = live_settings(database_url, redis_url, export_max_seconds=1)
        with TestClient(create_app(settings)) as client, locked(session_factory, "ledger_accounts"):
            response = client.get(f"{FINANCE}/ledger/export", headers=people.finance)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "export_time_limit"
            assert export_backends(engine) == []
        assert held_slots(redis_client) == 0

    def test_stream_cut_at_the_limit_raises_instead_of_a_trailer(self, engine: Engine, session: Session) -> None:
        bulk_ledger(session, tenant=None, entries=2_000, reason_bytes=1500)
        checked_out = in_use(engine)
        stream = ExportStream(
            engine, log=logs.LEDGER, filters=service.Filters(), fmt="csv", chunk_bytes=4096, max_seconds=1
        )
        chunks, totals = stream.start()
        assert totals["rows"] == 2_001
        body = next(chunks)
        # A consumer that pauses past the limit: the snapshot is gone at the deadline, not at its next read.
        assert export_backends(engine)
        wait_for(lambda: export_backends(engine) == [], timeout=3)
        parts = [body]
        with pytest.raises(ExportTimedOut):
            read_into(parts, chunks)
        assert not has_trailer(b"".join(parts))
        assert in_use(engine) == checked_out

    def test_a_primed_export_left_idle_ends_at_the_limit(self, engine: Engine) -> None:
        checked_out = in_use(engine)
        stream = ExportStream(engine, log=logs.AUDIT, filters=service.Filters(), fmt="csv", max_seconds=1)
        chunks, _ = stream.start()
        # Idle in its transaction (no statement a cancel could stop): the watchdog closes the connection itself.
        assert export_backends(engine)[0]["state"] == "idle in transaction"
        wait_for(lambda: export_backends(engine) == [], timeout=3)
        with pytest.raises(ExportTimedOut):
            next(chunks)
        assert in_use(engine) == checked_out

    def test_the_server_ends_a_stuck_snapshot_on_its_own(
        self, engine: Engine, session_factory: sessionmaker[Session]
    ) -> None:
        """The backstop should this process stall: the snapshot's own settings end a statement at the limit."""
        with locked(session_factory, "ledger_accounts"), engine.connect() as conn:
            conn.exec_driver_sql(snapshot_setup_sql(300))
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar_one() == "300ms"
            started = time.monotonic()
            with pytest.raises(OperationalError) as refused:
                conn.exec_driver_sql("SELECT count(*) FROM ledger_accounts")
            assert getattr(refused.value.orig, "pgcode", None) == "57014"
            assert time.monotonic() - started < 5
            conn.rollback()

    def test_cli_export_cut_at_the_limit_leaves_no_file(
        self, settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
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
        out = tmp_path / "ledger.csv"
        try:
            with locked(session_factory, "ledger_accounts"):
                result = CliRunner().invoke(cli, ["export", "ledger", "--max-seconds", "1", "-o", str(out)], env=env)
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 1, result.output
        assert "time limit (1 s)" in result.output
        assert list(tmp_path.iterdir()) == []


# --- aborting from another thread -------------------------------------------------------------------------------


class TestAbort:
    def test_abort_while_the_generator_is_running(self, engine: Engine, session_factory: sessionmaker[Session]) -> None:
        checked_out = in_use(engine)
        stream = ExportStream(engine, log=logs.LEDGER, filters=service.Filters(), fmt="csv")
        outcome: list[BaseException | None] = []

        def consume() -> None:
            try:
                stream.start()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        with locked(session_factory, "ledger_accounts"):
            consumer = threading.Thread(target=consume)
            consumer.start()
            # The generator is inside its totals query, which waits on the lock.
            wait_for(lambda: [b for b in export_backends(engine) if b["wait_event_type"] == "Lock"], timeout=5)
            stream.abort(ExportAborted("stop"))
            consumer.join(timeout=1)
            assert not consumer.is_alive()
            wait_for(lambda: export_backends(engine) == [], timeout=1)
        assert len(outcome) == 1
        assert isinstance(outcome[0], ExportAborted)
        assert in_use(engine) == checked_out

    def test_abort_while_copy_waits_on_a_full_pipe(self, engine: Engine, session: Session) -> None:
        bulk_ledger(session, tenant=None, entries=5_000, reason_bytes=1500)
        checked_out = in_use(engine)
        stream = ExportStream(engine, log=logs.LEDGER, filters=service.Filters(), fmt="jsonl", chunk_bytes=1024)
        chunks, _ = stream.start()
        body = next(chunks)
        # Nothing reads the pipe: the COPY fills it and the backend waits to send.
        wait_for(lambda: [b for b in export_backends(engine) if b["wait_event"] == "ClientWrite"], timeout=5)
        threading.Thread(target=stream.abort).start()
        # The backend ends without the generator taking another step.
        wait_for(lambda: export_backends(engine) == [], timeout=1)
        parts = [body]
        with pytest.raises(ExportAborted):
            read_into(parts, chunks)
        assert not has_trailer(b"".join(parts))
        assert in_use(engine) == checked_out
        stream.abort()  # after the end: nothing happens

    def test_a_whole_export_is_unaffected_by_a_late_abort(self, engine: Engine, session: Session) -> None:
        bulk_ledger(session, tenant=None, entries=50, reason_bytes=10)
        stream = ExportStream(engine, log=logs.LEDGER, filters=service.Filters(), fmt="csv", max_seconds=60)
        body = b"".join(stream.open())
        stream.abort()
        assert has_trailer(body)
        assert export_backends(engine) == []
