"""Fixtures for the Zendesk connector: the fake Zendesk, settings that allow it and seal credentials with a test
key, an app, a tenant set up through the admin API (connector, assets, rules) with a funded integration user, and
the worker's reply round run in-process."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint.app import create_app
from facemint.config import Settings
from facemint.db import make_engine, make_sessionmaker
from facemint.integrations.zendesk.replies import ReplySender
from facemint.storage import make_storage
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from tests.conftest import make_settings
from tests.factories import bearer, create_tenant, create_user, fund, issue_key
from tests.integrations.zendesk.fake_server import FakeZendesk
from tests.jobs import conftest as job_fixtures
from tests.jobs.conftest import face_png

# The demo models and their warm engine, shared with tests/jobs (fixtures, registered here by name).
models_dir = job_fixtures.models_dir
demo_engine = job_fixtures.demo_engine

# The key the tests seal credentials with (32 bytes, base64), under its own id.
KEY_ID = "zk-test"
KEY = base64.b64encode(bytes(range(32))).decode()
TEMPLATE = face_png(1)
SCENE = face_png(2)
OTHER_SCENE = face_png(3)


@pytest.fixture
def fake_zendesk() -> Iterator[FakeZendesk]:
    with FakeZendesk().running() as fake:
        yield fake


@pytest.fixture
def zendesk_settings(
    database_url: str, redis_url: str, models_dir: Path, tmp_path: Path, fake_zendesk: FakeZendesk
) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        engine_provider="cpu",
        job_heartbeat_seconds=0.2,
        job_stale_after_seconds=1.5,
        sweep_interval_seconds=0.2,
        job_redispatch_seconds=2.0,
        queue_name=f"swaps-zendesk-{os.getpid()}",
        plan_limits={"free": {"key": "100000/minute", "tenant": "100000/minute"}},
        integration_secret_keys={KEY_ID: KEY},
        integration_secret_key_id=KEY_ID,
        zendesk_allowed_base_urls=[fake_zendesk.base_url],
        zendesk_backoff_seconds=[0.2],
        zendesk_max_attempts=5,
        zendesk_poll_seconds=0.2,
        zendesk_timeout_seconds=5.0,
    )


@pytest.fixture
def zendesk_app(zendesk_settings: Settings) -> FastAPI:
    return create_app(zendesk_settings)


@pytest.fixture
def client(zendesk_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(zendesk_app) as test_client:
        yield test_client


@dataclass(frozen=True)
class Setup:
    """A tenant with a configured connector: its admin, its integration user (who pays), its assets."""

    tenant: Tenant
    admin: dict[str, str]  # the tenant admin's auth headers
    payer_id: int
    payer_account_id: int
    connector: dict[str, Any]  # the connector as the API answered
    template_id: int
    scene_id: int
    other_scene_id: int

    @property
    def base(self) -> str:
        return f"/admin/v1/tenants/{self.tenant.id}/integrations/zendesk"

    @property
    def webhook_path(self) -> str:
        return f"/integrations/zendesk/{self.connector['connector_id']}/webhook"


def upload(client: TestClient, base: str, headers: dict[str, str], kind: str, image: bytes, name: str = "x") -> Any:
    return client.post(
        f"{base}/assets",
        params={"kind": kind, "name": name},
        content=image,
        headers={**headers, "Content-Type": "image/png"},
    )


def connector_body(fake: FakeZendesk, payer_id: int, **overrides: Any) -> dict[str, Any]:
    return {
        "base_url": fake.base_url,
        "api_email": fake.email,
        "api_token": fake.api_token,
        "signing_secret": fake.signing_secret,
        "integration_user_id": payer_id,
        **overrides,
    }


MakeSetup = Callable[..., Setup]


@pytest.fixture
def make_setup(
    client: TestClient, session: Session, zendesk_settings: Settings, fake_zendesk: FakeZendesk
) -> MakeSetup:
    """`make_setup(tokens=10, rules=None, default=True)`: a tenant configured through the admin API. Rules name
    assets by role: "template", "scene", "other_scene"."""

    def make(tokens: int = 10, *, rules: list[dict[str, Any]] | None = None, default: bool = True) -> Setup:
        tenant = create_tenant(session)
        admin = create_user(session, tenant=tenant, role=Role.tenant_admin)
        headers = bearer(issue_key(session, zendesk_settings, admin))
        payer = create_user(session, tenant=tenant)
        if tokens:
            fund(session, account_id=payer.account_id, amount=tokens)
        base = f"/admin/v1/tenants/{tenant.id}/integrations/zendesk"
        put = client.put(base, json=connector_body(fake_zendesk, payer.id), headers=headers)
        assert put.status_code == 200, put.text
        ids = {}
        for role, kind, image in (
            ("template", "template", TEMPLATE),
            ("scene", "scene", SCENE),
            ("other_scene", "scene", OTHER_SCENE),
        ):
            made = upload(client, base, headers, kind, image, name=role)
            assert made.status_code == 201, made.text
            ids[role] = made.json()["id"]
        resolved = [
            {**rule, "template_id": ids[rule.get("template", "template")], "scene_id": ids[rule.get("scene", "scene")]}
            for rule in rules or []
        ]
        for rule in resolved:
            rule.pop("template", None)
            rule.pop("scene", None)
        body = {
            "rules": resolved,
            "default": {"template_id": ids["template"], "scene_id": ids["scene"]} if default else None,
        }
        put_rules = client.put(f"{base}/rules", json=body, headers=headers)
        assert put_rules.status_code == 200, put_rules.text
        return Setup(
            tenant=tenant,
            admin=headers,
            payer_id=payer.id,
            payer_account_id=payer.account_id,
            connector=put.json(),
            template_id=ids["template"],
            scene_id=ids["scene"],
            other_scene_id=ids["other_scene"],
        )

    return make


def send(client: TestClient, setup: Setup, fake: FakeZendesk, ticket_id: int, **ticket: Any) -> Any:
    """Zendesk's webhook for a new ticket, signed with the connector's secret."""
    body, headers = fake.webhook(ticket_id, **ticket)
    return client.post(setup.webhook_path, content=body, headers=headers)


@pytest.fixture
def reply_round(zendesk_settings: Settings) -> Iterator[Callable[[], int]]:
    """One round of the worker's reply sender, in-process (what every `facemint worker` runs in the background)."""
    database_url, _ = zendesk_settings.require_urls()
    engine = make_engine(database_url, pool_size=4)
    sender = ReplySender(make_sessionmaker(engine), settings=zendesk_settings, storage=make_storage(zendesk_settings))
    yield sender.run_once
    engine.dispose()


@pytest.fixture
def drain(zendesk_settings: Settings, demo_engine: Any) -> Callable[[], None]:
    """Run an in-process warm worker until the swap queue is empty (RQ burst mode), engine already loaded. Its own
    reply thread makes one round as it starts (before any swap has settled) and none after: the test runs the
    replies itself (`reply_round`), after setting up what Zendesk will answer."""
    from facemint.worker import runner

    settings = zendesk_settings.model_copy(update={"zendesk_poll_seconds": 300.0})
    return lambda: runner.run_worker(settings, queues=[settings.queue_name], burst=True, engine=demo_engine)


def ticket_row(engine: DbEngine, zendesk_ticket_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT * FROM zendesk_tickets WHERE zendesk_ticket_id = :id"), {"id": zendesk_ticket_id}
        ).one_or_none()


def count(engine: DbEngine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def audit_actions(engine: DbEngine, tenant_id: int) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT action FROM audit_events WHERE tenant_id = :t AND action LIKE 'zendesk.%' ORDER BY id"),
                {"t": tenant_id},
            ).scalars()
        )
