"""No secret reaches a log line. A representative workload runs with every logger at DEBUG (SQLAlchemy echoing
statements and rows, RQ, httpx, the app's own loggers): sign-ins (one with a wrong password), users with passwords,
API keys, the webhook secret read and rotated, single and batch recharges with distinctive reasons, a swap with
distinctive image bytes run by an in-process worker, its webhook delivered, and a request that fails on an
unexpected database error (the path that logs a traceback). Then every captured record (message, arguments,
extras, exception text), and the same records as `log_format=json` writes them (with the request's and job's
fields), are searched for everything secret the workload created."""

from __future__ import annotations

import base64
import io
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from facemint import log_setup
from facemint.app import create_app
from facemint.config import Settings
from facemint.users.orm import Role
from facemint.webhooks import sender
from inference.models import write_demo_models
from tests.conftest import make_settings
from tests.factories import bearer, create_user, issue_key
from tests.jobs.conftest import face_png, wait_for
from tests.platform.webhook_helpers import Receiver, serve_receiver

MARK = uuid.uuid4().hex[:10]


@dataclass
class Secrets:
    """Everything the workload creates that must never be logged: text, and bytes (searched as their repr,
    base64 and hex)."""

    texts: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, value: str) -> str:
        assert len(value) >= 8, (name, value)  # long enough not to turn up by chance
        self.texts[name] = value
        return value

    def add_bytes(self, name: str, data: bytes) -> bytes:
        """Windows of `data` at offsets divisible by 3, 48 bytes long: their base64 is a substring of the base64 of
        any larger run that holds them aligned the same way (and their repr and hex of any repr or hex)."""
        for offset in range(len(data) // 4 // 3 * 3, len(data) - 48, max(len(data) // 5 // 3 * 3, 3)):
            window = data[offset : offset + 48]
            self.blobs[f"{name}[{offset}:]"] = window
        return data

    def found_in(self, text: str) -> list[str]:
        found = [name for name, value in self.texts.items() if value in text]
        for name, window in self.blobs.items():
            for form in (repr(window)[2:-1], base64.b64encode(window).decode(), window.hex()):
                if form in text:
                    found.append(f"{name} as {form[:12]}...")
        return found


def _record_text(record: logging.LogRecord) -> str:
    formatted = logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)  # message and traceback
    return "\n".join((formatted, repr(record.args), repr(vars(record))))


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("sqlalchemy.engine", "sqlalchemy.pool", "rq", "httpx", "httpcore", "facemint", "billing"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture
def hygiene_settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    models = tmp_path / "models"
    write_demo_models(models)
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path / "data",
        models_dir=models,
        engine_provider="cpu",
        webhook_allowed_networks=["127.0.0.0/8"],
        queue_name=f"swaps-hygiene-{MARK}",
        plan_limits={"free": {"key": "100000/minute", "tenant": "100000/minute"}},
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as rec:
        yield rec


@dataclass(frozen=True)
class ForcedFailures:
    raised: str  # a trigger raises: the error names the statement, never its parameters
    checked: str  # a CHECK refuses the row: Postgres's DETAIL would quote the failing row's values


@pytest.fixture
def forced_failures(owner_engine: Engine) -> Iterator[ForcedFailures]:
    """Reasons the database refuses with errors the application does not expect (a trigger and a CHECK the owner
    adds for this test): the requests that carry them fail with a 500 and a logged traceback."""
    forced = ForcedFailures(raised=f"raised-{uuid.uuid4().hex}", checked=f"checked-{uuid.uuid4().hex}")
    with owner_engine.begin() as conn:
        conn.execute(
            text(
                f"""
                CREATE FUNCTION log_hygiene_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.reason = '{forced.raised}' THEN
                        RAISE EXCEPTION 'refused by the log hygiene test' USING ERRCODE = 'XX000';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER log_hygiene_refuse BEFORE INSERT ON ledger_transactions "
                "FOR EACH ROW EXECUTE FUNCTION log_hygiene_refuse()"
            )
        )
        conn.execute(
            text(
                "ALTER TABLE ledger_transactions ADD CONSTRAINT log_hygiene_refuse "
                f"CHECK (reason IS DISTINCT FROM '{forced.checked}') NOT VALID"
            )
        )
    try:
        yield forced
    finally:
        with owner_engine.begin() as conn:
            conn.execute(text("ALTER TABLE ledger_transactions DROP CONSTRAINT IF EXISTS log_hygiene_refuse"))
            conn.execute(text("DROP TRIGGER IF EXISTS log_hygiene_refuse ON ledger_transactions"))
            conn.execute(text("DROP FUNCTION IF EXISTS log_hygiene_refuse()"))


def _from_the_service(record: logging.LogRecord) -> bool:
    """The test client's own request lines (httpx, naming http://testserver) are the caller's, not the service's
    (whose access lines leave out the query string: tests/platform/test_cli.py)."""
    return not (record.name == "httpx" and "http://testserver" in record.getMessage())


@pytest.fixture
def json_output(debug_logs: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """The service's lines as the JSON handler (`log_format=json`) writes them."""
    stream = io.StringIO()
    handler = log_setup.json_handler(stream)
    handler.addFilter(_from_the_service)
    logging.getLogger().addHandler(handler)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)


def test_no_secret_reaches_a_log_line(
    debug_logs: pytest.LogCaptureFixture,
    hygiene_settings: Settings,
    session: Session,
    session_factory: sessionmaker[Session],
    receiver: Receiver,
    forced_failures: ForcedFailures,
    json_output: io.StringIO,
) -> None:
    secrets = Secrets()
    settings = hygiene_settings
    admin_password = secrets.add("admin password", f"admin-pass-{MARK}-{uuid.uuid4().hex}")
    admin = create_user(session, role=Role.platform_admin, password=admin_password)
    staff_key = secrets.add("staff key", issue_key(session, settings, admin))
    staff = bearer(staff_key)

    with TestClient(create_app(settings)) as client:
        # Sign-ins: one right, one wrong. The token is a credential too.
        wrong = secrets.add("wrong password", f"wrong-pass-{MARK}-{uuid.uuid4().hex}")
        refused = client.post("/auth/token", json={"email": admin.email, "password": wrong})
        assert refused.status_code == 401
        signed_in = client.post("/auth/token", json={"email": admin.email, "password": admin_password})
        assert signed_in.status_code == 200, signed_in.text
        secrets.add("access token", signed_in.json()["access_token"])

        tenant = client.post("/admin/v1/tenants", json={"name": f"Hygiene {MARK}"}, headers=staff)
        assert tenant.status_code == 201, tenant.text
        tenant_id = tenant.json()["id"]
        users = {}
        for role in ("tenant_admin", "member"):
            password = secrets.add(f"{role} password", f"{role}-pass-{MARK}-{uuid.uuid4().hex}")
            created = client.post(
                "/admin/v1/users",
                json={
                    "email": f"{role}-{MARK}@example.test",
                    "role": role,
                    "tenant_id": tenant_id,
                    "password": password,
                },
                headers=staff,
            )
            assert created.status_code == 201, created.text
            users[role] = created.json()
        key = client.post(
            "/admin/v1/api-keys",
            json={"user_id": users["member"]["id"], "name": "hygiene", "scopes": ["swaps:write", "jobs:read"]},
            headers=staff,
        )
        assert key.status_code == 201, key.text
        member = bearer(secrets.add("member key", key.json()["key"]))
        changed = client.patch(
            f"/admin/v1/users/{users['tenant_admin']['id']}",
            json={"password": secrets.add("changed password", f"changed-pass-{MARK}-{uuid.uuid4().hex}")},
            headers=staff,
        )
        assert changed.status_code == 200, changed.text

        read = client.get(f"/admin/v1/tenants/{tenant_id}/webhook-secret", headers=staff)
        assert read.status_code == 200, read.text
        secrets.add("webhook secret", read.json()["secret"])
        rotated = client.post(f"/admin/v1/tenants/{tenant_id}/webhook-secret/rotate", headers=staff)
        assert rotated.status_code == 200, rotated.text
        secrets.add("rotated webhook secret", rotated.json()["secret"])

        # Recharges: the reasons and references are bound parameters of their statements.
        single = client.post(
            "/admin/v1/recharges",
            json={
                "user_id": users["member"]["id"],
                "amount": 20,
                "reason": secrets.add("single reason", f"single-reason-{MARK}-{uuid.uuid4().hex}"),
                "reference": secrets.add("single reference", f"single-ref-{MARK}-{uuid.uuid4().hex[:12]}"),
            },
            headers={**staff, "Idempotency-Key": f"single-{MARK}"},
        )
        assert single.status_code == 201, single.text
        batch = client.post(
            "/admin/v1/recharges/batch",
            json={
                "reason": secrets.add("batch reason", f"batch-reason-{MARK}-{uuid.uuid4().hex}"),
                "items": [
                    {
                        "user_id": users[role]["id"],
                        "amount": 3,
                        "reference": secrets.add(f"{role} row reference", f"row-{role}-{uuid.uuid4().hex[:16]}"),
                    }
                    for role in ("tenant_admin", "member")
                ],
            },
            headers={**staff, "Idempotency-Key": f"batch-{MARK}"},
        )
        assert batch.status_code == 201, batch.text
        csv_reference = secrets.add("csv row reference", f"csv-{uuid.uuid4().hex[:20]}")
        csv = client.post(
            "/admin/v1/recharges/batch",
            params={"mode": "partial", "reason": secrets.add("csv reason", f"csv-reason-{MARK}-{uuid.uuid4().hex}")},
            content=f"email,amount,reference\n{users['member']['email']},2,{csv_reference}\n".encode(),
            headers={**staff, "Idempotency-Key": f"csv-{MARK}", "Content-Type": "text/csv"},
        )
        assert csv.status_code == 201, csv.text

        # A swap with distinctive images, run by an in-process worker; its webhook delivered.
        source = secrets.add_bytes("source image", face_png(7, size=200))
        target = secrets.add_bytes("target image", face_png(8, size=220))
        submitted = client.post(
            "/v1/swaps",
            headers={**member, "Idempotency-Key": f"swap-{MARK}"},
            files={"source": ("s.png", source, "image/png"), "target": ("t.png", target, "image/png")},
            data={"webhook_url": receiver.url("/hook")},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        _run_worker(settings)
        job = client.get(f"/v1/jobs/{job_id}", headers=member).json()
        assert job["status"] == "succeeded", job
        result = client.get(job["result_url"], headers=member)
        assert result.status_code == 200
        secrets.add_bytes("result image", result.content)
        # The worker's own sender may have delivered it already; if not, this round does. Either way it arrives.
        sender.deliver_due(session_factory, settings=settings)
        wait_for(lambda: receiver.calls_to("/hook"), timeout=10)

        # Unexpected database errors on requests: answered 500, their tracebacks logged.
        for name, reason in (("raised", forced_failures.raised), ("checked", forced_failures.checked)):
            failed = client.post(
                "/admin/v1/recharges",
                json={"user_id": users["member"]["id"], "amount": 1, "reason": secrets.add(f"{name} reason", reason)},
                headers={**staff, "Idempotency-Key": f"forced-{name}-{MARK}"},
            )
            assert failed.status_code == 500, failed.text

    records = [record for record in debug_logs.records if _from_the_service(record)]
    for refusal in ("refused by the log hygiene test", 'violates check constraint "log_hygiene_refuse"'):
        assert any(r.exc_info and refusal in _record_text(r) for r in records), f"no traceback logged: {refusal}"
    assert any(r.name.startswith("sqlalchemy.engine") for r in records), "SQL statements were echoed"
    leaks = {
        f"{record.name}:{record.lineno}": found
        for record in records
        if (found := secrets.found_in(_record_text(record)))
    }
    assert leaks == {}
    json_lines = json_output.getvalue()
    assert '"request_id"' in json_lines
    assert '"job_id"' in json_lines
    assert secrets.found_in(json_lines) == []


def _run_worker(settings: Settings) -> None:
    """The worker in this process (RQ burst mode): the engine loaded from the demo models, the job run, gone."""
    from facemint.worker import runner

    runner.run_worker(settings, queues=[settings.queue_name], burst=True)
