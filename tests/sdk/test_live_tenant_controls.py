"""The SDK's tenant controls against a live `facemint serve`: a tenant's events URL and account events, low-balance
alerts (the caller's own, a user's, a pool's), abuse rules and the triggers they raise (a freeze rule met by real
submits through the SDK, then resolved with an unfreeze), and the Zendesk connector's admin API (no Zendesk
traffic: the connector, its assets and rules only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from facemint_client import (
    AccountFrozen,
    AsyncFacemint,
    Conflict,
    Facemint,
    NotFound,
    UnprocessableEntity,
    UserFrozen,
)
from facemint_client.zendesk_models import ZendeskAssetPair, ZendeskRule
from tests.jobs.conftest import SOURCE, TARGET
from tests.sdk.conftest import MakePerson, balance

ClientFor = Callable[..., Facemint]
# A receiver nobody listens at: events are recorded for it (no worker runs here to deliver them).
EVENTS_URL = "http://127.0.0.1:9/facemint-events"


# --- the events URL ------------------------------------------------------------------------------------------


def test_a_tenants_events_url_is_set_read_and_cleared(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant
) -> None:
    admin = client_for(make_person(Role.tenant_admin, tenant=tenant)).admin.tenants
    assert admin.events_webhook(tenant.id).url is None
    assert admin.set_events_webhook(tenant.id, EVENTS_URL).url == EVENTS_URL
    assert admin.events_webhook(tenant.id).url == EVENTS_URL
    with pytest.raises(UnprocessableEntity) as refused:
        admin.set_events_webhook(tenant.id, "ftp://example.test/events")
    assert refused.value.code == "invalid_webhook_url"
    assert admin.set_events_webhook(tenant.id, None).url is None
    assert admin.events_webhook(tenant.id).url is None
    assert admin.events(tenant.id) == []


# --- low-balance alerts --------------------------------------------------------------------------------------


def test_a_callers_own_alert_is_set_read_and_removed_and_its_admins_see_it(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant
) -> None:
    member = make_person(Role.member, tenant=tenant, tokens=50)
    own = client_for(member).account
    alerts = client_for(make_person(Role.tenant_admin, tenant=tenant)).admin.balance_alerts
    with pytest.raises(NotFound) as none:
        own.alert()
    assert none.value.code == "balance_alert_not_found"
    alert = own.set_alert(100, hysteresis=5)
    assert (alert.account, alert.user_id, alert.tenant_id) == ("user", member.user.id, tenant.id)
    assert (alert.threshold, alert.hysteresis, alert.rearm_at, alert.available) == (100, 5, 105, 50)
    assert own.alert() == alert
    seen = alerts.user(member.user.id)
    assert (seen.threshold, seen.rearm_at) == (100, 105)
    assert own.set_alert(20).hysteresis == 2  # replaced; the default hysteresis is a tenth of the threshold
    own.remove_alert()
    own.remove_alert()  # nothing set: nothing to do
    with pytest.raises(NotFound):
        alerts.user(member.user.id)


def test_a_users_and_a_pools_alert_are_set_read_and_removed_by_an_admin(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant
) -> None:
    member = make_person(Role.member, tenant=tenant)
    alerts = client_for(make_person(Role.tenant_admin, tenant=tenant)).admin.balance_alerts
    user_alert = alerts.set_user(member.user.id, 30)
    pool_alert = alerts.set_pool(tenant.id, 1_000, hysteresis=0)
    assert (user_alert.account, user_alert.threshold, user_alert.hysteresis) == ("user", 30, 3)
    assert (pool_alert.account, pool_alert.user_id, pool_alert.tenant_id) == ("tenant_pool", None, tenant.id)
    assert alerts.pool(tenant.id).rearm_at == 1_000
    alerts.remove_pool(tenant.id)
    alerts.remove_user(member.user.id)
    for read in (lambda: alerts.pool(tenant.id), lambda: alerts.user(member.user.id)):
        with pytest.raises(NotFound):
            read()


def test_the_async_client_sets_and_removes_an_alert_too(
    async_client_for: Callable[..., AsyncFacemint], make_person: MakePerson, tenant: Tenant
) -> None:
    member = make_person(Role.member, tenant=tenant, tokens=7)

    async def scenario() -> tuple[int, int]:
        async with async_client_for(member) as own:
            alert = await own.account.set_alert(10)
            await own.account.remove_alert()
            try:
                await own.account.alert()
            except NotFound:
                return alert.threshold, alert.available
            raise AssertionError("the alert is still there")

    assert asyncio.run(scenario()) == (10, 7)


# --- abuse rules and triggers --------------------------------------------------------------------------------


def test_an_abuse_rule_is_created_listed_updated_and_deleted(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant
) -> None:
    rules = client_for(make_person(Role.tenant_admin, tenant=tenant)).admin.abuse_rules
    rule = rules.create(tenant.id, kind="jobs_per_window", action="flag", window_seconds=60, max_jobs=5)
    assert (rule.tenant_id, rule.kind, rule.action, rule.enabled, rule.max_jobs) == (
        tenant.id,
        "jobs_per_window",
        "flag",
        True,
        5,
    )
    assert rule.multiple is None
    assert [r.id for r in rules.list(tenant.id)] == [rule.id]
    updated = rules.update(tenant.id, rule.id, enabled=False, max_jobs=10)
    assert (updated.enabled, updated.max_jobs, updated.window_seconds) == (False, 10, 60)
    assert rules.get(tenant.id, rule.id) == updated
    with pytest.raises(UnprocessableEntity):
        rules.create(tenant.id, kind="spend_rate", action="flag", window_seconds=60, max_jobs=5)
    rules.delete(tenant.id, rule.id)
    assert rules.list(tenant.id) == []
    with pytest.raises(NotFound) as gone:
        rules.get(tenant.id, rule.id)
    assert gone.value.code == "abuse_rule_not_found"
    with pytest.raises(NotFound):
        rules.delete(tenant.id, rule.id)  # an answer not lost: a second delete is reported


def test_a_submit_past_a_freeze_rule_raises_account_frozen_and_resolving_the_trigger_unfreezes(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant, engine: Engine
) -> None:
    staff = client_for(make_person(Role.tenant_admin, tenant=tenant)).admin
    member = make_person(Role.member, tenant=tenant, tokens=10)
    own = client_for(member)
    staff.tenants.set_events_webhook(tenant.id, EVENTS_URL)
    rule = staff.abuse_rules.create(tenant.id, kind="jobs_per_window", action="freeze", window_seconds=3600, max_jobs=2)
    queued = [own.jobs.submit(SOURCE, TARGET) for _ in range(2)]
    assert balance(engine, member.account_id) == (10, 2)
    with pytest.raises(AccountFrozen) as frozen:
        own.jobs.submit(SOURCE, TARGET)
    assert (frozen.value.status, frozen.value.code) == (403, "account_frozen")
    assert isinstance(frozen.value, UserFrozen)
    with pytest.raises(UserFrozen) as later:
        own.account.balance()
    assert later.value.code == "user_frozen"
    # The freeze released the queued jobs: nothing stays held.
    assert [staff.jobs.get(job.id).status for job in queued] == ["canceled", "canceled"]
    assert balance(engine, member.account_id) == (10, 0)

    (trigger,) = staff.abuse_triggers.list(tenant_id=tenant.id, status="open")
    assert (trigger.rule_id, trigger.user_id, trigger.action, trigger.status) == (
        rule.id,
        member.user.id,
        "freeze",
        "open",
    )
    assert staff.abuse_triggers.get(trigger.id) == trigger
    (event,) = staff.tenants.events(tenant.id)
    assert event.event_type == "abuse.triggered"
    assert event.payload["data"]["user_id"] == member.user.id

    resolved = staff.abuse_triggers.resolve(trigger.id, note="a load test, agreed", unfreeze=True)
    assert (resolved.status, resolved.unfroze, resolved.note) == ("resolved", True, "a load test, agreed")
    assert list(staff.abuse_triggers.list(tenant_id=tenant.id, status="open")) == []
    with pytest.raises(Conflict) as again:
        staff.abuse_triggers.resolve(trigger.id)
    assert again.value.code == "abuse_trigger_resolved"
    assert own.account.balance().available == 10  # unfrozen, counters afresh: it may submit again
    assert own.jobs.submit(SOURCE, TARGET).status == "queued"


# --- the Zendesk connector -----------------------------------------------------------------------------------


def test_a_zendesk_connector_is_put_and_read_and_its_assets_uploaded_listed_and_deleted(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant, tmp_path: Path
) -> None:
    payer = make_person(Role.member, tenant=tenant)
    zendesk = client_for(make_person(Role.tenant_admin, tenant=tenant)).admin.zendesk
    with pytest.raises(NotFound) as none:
        zendesk.connector(tenant.id)
    assert none.value.code == "zendesk_connector_not_found"
    put = zendesk.put_connector(
        tenant.id,
        subdomain="acme",
        api_email="Agent@Acme.test",
        api_token="zd-token-not-shown",
        integration_user_id=payer.user.id,
    )
    assert (put.base_url, put.api_email, put.integration_user_id) == (
        "https://acme.zendesk.com",
        "agent@acme.test",
        payer.user.id,
    )
    assert put.api_token_fingerprint
    assert "zd-token-not-shown" not in repr(put)
    assert put.signing_secret_fingerprint is None
    assert put.connector_id in put.webhook_url
    assert zendesk.connector(tenant.id) == put
    replaced = zendesk.put_connector(
        tenant.id, subdomain="acme", api_email="agent@acme.test", integration_user_id=payer.user.id, enabled=False
    )
    assert (replaced.enabled, replaced.api_token_fingerprint) == (False, put.api_token_fingerprint)  # token kept

    scene_file = tmp_path / "scene.png"
    scene_file.write_bytes(TARGET)
    template = zendesk.upload_asset(tenant.id, SOURCE, kind="template", name="the avatar")
    scene = zendesk.upload_asset(tenant.id, scene_file, kind="scene", name="the office")
    assert (template.kind, template.content_type, template.size_bytes) == ("template", "image/png", len(SOURCE))
    assert (scene.kind, scene.width) == ("scene", 256)
    assert sorted(a.id for a in zendesk.assets(tenant.id)) == sorted([template.id, scene.id])

    rule = ZendeskRule(template_id=template.id, scene_id=scene.id, tags=["avatar"])
    rules = zendesk.set_rules(tenant.id, [rule], default=ZendeskAssetPair(template_id=template.id, scene_id=scene.id))
    assert rules.rules == [rule]
    assert zendesk.rules(tenant.id) == rules
    with pytest.raises(Conflict) as in_use:
        zendesk.delete_asset(tenant.id, scene.id)
    assert in_use.value.code == "zendesk_asset_in_use"
    zendesk.set_rules(tenant.id, [])
    zendesk.delete_asset(tenant.id, scene.id)
    assert [a.id for a in zendesk.assets(tenant.id)] == [template.id]
    assert list(zendesk.tickets(tenant.id)) == []
