"""The connector's admin API: credentials sealed at rest and never shown, only Zendesk's own hosts called, assets
and rules by id, and every tenant's connector its own."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.integrations import credentials
from facemint.users.orm import Role
from tests.factories import bearer, create_tenant, create_user, issue_key
from tests.integrations.zendesk.conftest import KEY_ID, SCENE, MakeSetup, connector_body, upload
from tests.integrations.zendesk.fake_server import FakeZendesk
from tests.jobs.conftest import problem


def test_credentials_are_sealed_at_rest_and_never_shown(
    client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, engine: DbEngine, zendesk_settings: Settings
) -> None:
    setup = make_setup()
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM zendesk_connectors WHERE tenant_id = :t"), {"t": setup.tenant.id}).one()
        trail = conn.execute(
            text("SELECT before::text, after::text FROM audit_events WHERE action LIKE 'zendesk.connector.%'")
        ).all()
    for secret, sealed, field in (
        (fake_zendesk.api_token, row.api_token_sealed, "api_token"),
        (fake_zendesk.signing_secret, row.signing_secret_sealed, "signing_secret"),
    ):
        stored = bytes(sealed)
        assert secret.encode() not in stored
        assert stored.startswith(credentials.MAGIC)
        assert credentials.key_id(stored) == KEY_ID
        keys = credentials.keyring(zendesk_settings)
        context = f"zendesk_connectors:{setup.tenant.id}:{field}"
        assert credentials.unseal(stored, keys=keys, context=context) == secret
    shown = client.get(setup.base, headers=setup.admin)
    assert shown.status_code == 200
    for secret in (fake_zendesk.api_token, fake_zendesk.signing_secret):
        assert secret not in shown.text
        assert secret not in str(trail)
    body = shown.json()
    assert body["api_token_fingerprint"] == credentials.fingerprint(fake_zendesk.api_token)
    assert body["credentials_key_id"] == KEY_ID
    assert body["webhook_url"].endswith(f"/integrations/zendesk/{body['connector_id']}/webhook")
    assert body["connector_id"].startswith("zdc_")


def test_credentials_left_out_are_kept_and_a_new_connector_needs_them(
    client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, session: Session, zendesk_settings: Settings
) -> None:
    setup = make_setup()
    body = connector_body(fake_zendesk, setup.payer_id, reply_body="Your avatar!")
    del body["api_token"], body["signing_secret"]
    updated = client.put(setup.base, json=body, headers=setup.admin)
    assert updated.status_code == 200, updated.text
    assert updated.json()["reply_body"] == "Your avatar!"
    assert updated.json()["api_token_fingerprint"] == setup.connector["api_token_fingerprint"]
    rotated = client.put(setup.base, json={**body, "signing_secret": "new-secret"}, headers=setup.admin)
    assert rotated.json()["signing_secret_fingerprint"] == credentials.fingerprint("new-secret")
    # A tenant's first save without them is refused, and nothing is made.
    tenant = create_tenant(session)
    headers = bearer(issue_key(session, zendesk_settings, create_user(session, tenant=tenant, role=Role.tenant_admin)))
    base = f"/admin/v1/tenants/{tenant.id}/integrations/zendesk"
    body = {**body, "integration_user_id": create_user(session, tenant=tenant).id}
    answer = problem(client.put(base, json=body, headers=headers), 422, "invalid_zendesk_connector")
    assert answer["detail"] == "a new connector needs its `api_token`"
    problem(client.get(base, headers=headers), 404, "zendesk_connector_not_found")


@pytest.mark.parametrize(
    "address",
    [
        {"base_url": "http://acme.zendesk.com"},
        {"base_url": "https://evil.example.com"},
        {"base_url": "https://acme.zendesk.com.evil.example.com"},
        {"base_url": "https://acme.zendesk.com@evil.example.com"},
        {"base_url": "https://169.254.169.254"},
        {"base_url": "http://127.0.0.1:1"},  # loopback, but not the base URL the settings allow
        {"subdomain": "acme.evil"},
        {"subdomain": "-acme"},
        {"subdomain": "acme", "base_url": "https://acme.zendesk.com"},
    ],
)
def test_only_zendesk_hosts_or_an_allowed_test_base_are_accepted(
    client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, address: dict[str, str]
) -> None:
    setup = make_setup()
    body = {**connector_body(fake_zendesk, setup.payer_id), "base_url": None, **address}
    problem(client.put(setup.base, json=body, headers=setup.admin), 422)
    assert client.get(setup.base, headers=setup.admin).json()["base_url"] == fake_zendesk.base_url


def test_a_subdomain_names_its_zendesk(client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk) -> None:
    setup = make_setup()
    body = {**connector_body(fake_zendesk, setup.payer_id), "base_url": None, "subdomain": "acme-support"}
    assert (
        client.put(setup.base, json=body, headers=setup.admin).json()["base_url"] == "https://acme-support.zendesk.com"
    )


def test_the_integration_user_must_be_the_tenants(
    client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk, session: Session
) -> None:
    setup, other = make_setup(), make_setup()
    staff = create_user(session, role=Role.operator)
    for user_id in (other.payer_id, staff.id, 9_000_000_000):
        answer = client.put(setup.base, json=connector_body(fake_zendesk, user_id), headers=setup.admin)
        assert (
            problem(answer, 422, "invalid_zendesk_connector")["detail"]
            == f"user {user_id} is not a user of this tenant"
        )


def test_assets_are_checked_images_named_by_id(
    client: TestClient, make_setup: MakeSetup, zendesk_settings: Settings, engine: DbEngine
) -> None:
    setup = make_setup()
    problem(upload(client, setup.base, setup.admin, "scene", b"GIF89a......"), 415, "unsupported_image_format")
    problem(upload(client, setup.base, setup.admin, "scene", b"not an image at all"), 415)
    wrong_type = client.post(
        f"{setup.base}/assets",
        params={"kind": "scene", "name": "x"},
        content=SCENE,
        headers={**setup.admin, "Content-Type": "application/octet-stream"},
    )
    problem(wrong_type, 415, "unsupported_asset_type")
    problem(upload(client, setup.base, setup.admin, "face", SCENE), 422)
    listed = client.get(f"{setup.base}/assets", headers=setup.admin).json()["items"]
    assert [(a["id"], a["kind"], a["name"]) for a in listed] == [
        (setup.template_id, "template", "template"),
        (setup.scene_id, "scene", "scene"),
        (setup.other_scene_id, "scene", "other_scene"),
    ]
    assert (listed[1]["content_type"], listed[1]["width"]) == ("image/png", 256)
    # In use by the default: 409. Unused: retired, and its image deleted.
    problem(client.delete(f"{setup.base}/assets/{setup.scene_id}", headers=setup.admin), 409, "zendesk_asset_in_use")
    with engine.connect() as conn:
        key = conn.execute(
            text("SELECT storage_key FROM zendesk_assets WHERE id = :id"), {"id": setup.other_scene_id}
        ).scalar_one()
    stored = zendesk_settings.resolved_storage_dir / key
    assert key.startswith(f"integrations/zendesk/{setup.tenant.id}/assets/")
    assert stored.is_file()
    assert client.delete(f"{setup.base}/assets/{setup.other_scene_id}", headers=setup.admin).status_code == 204
    assert not stored.exists()
    problem(client.delete(f"{setup.base}/assets/{setup.other_scene_id}", headers=setup.admin), 404)
    assert len(client.get(f"{setup.base}/assets", headers=setup.admin).json()["items"]) == 2


def test_rules_name_the_tenants_live_assets_of_the_right_kind(client: TestClient, make_setup: MakeSetup) -> None:
    setup = make_setup()
    rules_path = f"{setup.base}/rules"

    def put(rules: list[dict[str, Any]], default: dict[str, int] | None = None) -> Any:
        return client.put(rules_path, json={"rules": rules, "default": default}, headers=setup.admin)

    good = {"tags": ["VIP "], "template_id": setup.template_id, "scene_id": setup.scene_id}
    assert put([good]).json()["rules"][0]["tags"] == ["vip"]
    problem(put([{**good, "scene_id": setup.template_id}]), 422, "invalid_zendesk_rules")  # a template as scene
    problem(put([{**good, "template_id": 9_000_000}]), 422, "invalid_zendesk_rules")
    problem(put([{"template_id": setup.template_id, "scene_id": setup.scene_id}]), 422)  # no condition
    problem(put([{**good, "path": "/etc/passwd"}]), 422)  # nothing but ids names an image
    assert client.get(rules_path, headers=setup.admin).json() == {
        "rules": [{**good, "tags": ["vip"], "subject_keywords": [], "group_id": None}],
        "default": None,
    }


def test_every_tenants_connector_assets_and_tickets_are_its_own(
    client: TestClient, make_setup: MakeSetup, fake_zendesk: FakeZendesk
) -> None:
    mine, theirs = make_setup(), make_setup()
    assert mine.connector["connector_id"] != theirs.connector["connector_id"]
    for method, path, body in [
        ("GET", theirs.base, None),
        ("PUT", theirs.base, connector_body(fake_zendesk, mine.payer_id)),
        ("GET", f"{theirs.base}/rules", None),
        ("PUT", f"{theirs.base}/rules", {"rules": [], "default": None}),
        ("GET", f"{theirs.base}/assets", None),
        ("DELETE", f"{theirs.base}/assets/{theirs.other_scene_id}", None),
        ("GET", f"{theirs.base}/tickets", None),
    ]:
        problem(client.request(method, path, json=body, headers=mine.admin), 404, "tenant_not_found")
    problem(upload(client, theirs.base, mine.admin, "scene", SCENE), 404, "tenant_not_found")
    # Its own routes cannot reach the other's assets either: they answer as missing ones do.
    rule = {"tags": ["x"], "template_id": theirs.template_id, "scene_id": theirs.scene_id}
    answer = problem(client.put(f"{mine.base}/rules", json={"rules": [rule]}, headers=mine.admin), 422)
    assert answer["detail"] == f"asset {theirs.template_id} is not one of this tenant's assets"
    problem(client.delete(f"{mine.base}/assets/{theirs.other_scene_id}", headers=mine.admin), 404)
    # Nothing of theirs changed.
    assert client.get(f"{theirs.base}/assets", headers=theirs.admin).json()["items"][2]["id"] == theirs.other_scene_id
    assert client.get(theirs.base, headers=theirs.admin).json()["integration_user_id"] == theirs.payer_id


def test_members_cannot_see_or_change_the_connector(
    client: TestClient, make_setup: MakeSetup, session: Session, zendesk_settings: Settings
) -> None:
    setup = make_setup()
    member = bearer(issue_key(session, zendesk_settings, create_user(session, tenant=setup.tenant)))
    problem(client.get(setup.base, headers=member), 403, "insufficient_scope")
    problem(client.put(f"{setup.base}/rules", json={"rules": []}, headers=member), 403, "insufficient_scope")
    finance = bearer(issue_key(session, zendesk_settings, create_user(session, role=Role.finance)))
    assert client.get(setup.base, headers=finance).status_code == 200  # fingerprints only
    problem(client.delete(f"{setup.base}/assets/{setup.other_scene_id}", headers=finance), 403, "insufficient_scope")
