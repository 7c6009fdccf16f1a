"""Low-balance alerts: set, read and removed over /v1 and the admin API (validated, audited), and evaluated in the
transaction of every platform movement (adjustments, reversals, recharges, batches): one `balance.low` event per
downward crossing, re-armed only at threshold + hysteresis, exactly once under concurrent debits, delivered signed
to the tenant's events URL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from facemint.audit.orm import AuditEvent
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope, scopes_for_role
from facemint.balance_alerts import evaluation
from facemint.balance_alerts import service as alerts
from facemint.balance_alerts.schemas import BalanceAlertSet
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.db import unit_of_work
from facemint.recharges import service as recharge_service
from facemint.recharges.schemas import RechargeCreate
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from facemint.webhooks import sender
from facemint.webhooks import service as webhooks
from tests.conftest import make_settings
from tests.factories import create_tenant, create_user, fund
from tests.platform.balance_alert_helpers import adjust, alert_of, low_balance_events, name_events_url
from tests.platform.conftest import Caller, MakeCaller
from tests.platform.webhook_helpers import Receiver, serve_receiver, tenant_secret

OWN = "/v1/balance/alert"


def user_alert(user_id: int) -> str:
    return f"/admin/v1/users/{user_id}/balance/alert"


def pool_alert(tenant_id: int) -> str:
    return f"/admin/v1/tenants/{tenant_id}/pool/alert"


def audit_trail(session: Session) -> list[tuple[str, str, str | None, Any, Any]]:
    session.expire_all()
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.action.like("balance_alert.%")).order_by(AuditEvent.id)
    ).all()
    return [(e.action, e.target_type, e.target_id, e.before, e.after) for e in events]


@pytest.fixture
def tenant(session: Session) -> Tenant:
    tenant = create_tenant(session)
    name_events_url(session, tenant.id)
    return tenant


@pytest.fixture
def operator(make_caller: MakeCaller) -> Caller:
    return make_caller(Role.operator)


class TestSettings:
    def test_a_member_sets_reads_and_removes_its_own_alert_and_each_change_is_audited(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller
    ) -> None:
        member = make_caller(Role.member, tenant)
        fund(session, account_id=member.user.account_id, amount=500)
        missing = client.get(OWN, headers=member.headers)
        assert missing.status_code == 404
        assert missing.json()["code"] == "balance_alert_not_found"

        response = client.put(OWN, json={"threshold": 100}, headers=member.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert {k: body[k] for k in ("account", "user_id", "tenant_id", "threshold", "hysteresis", "rearm_at")} == {
            "account": "user",
            "user_id": member.id,
            "tenant_id": tenant.id,
            "threshold": 100,
            "hysteresis": 10,
            "rearm_at": 110,
        }
        assert (body["armed"], body["available"], body["fired_at"]) == (True, 500, None)
        assert client.get(OWN, headers=member.headers).json() == body

        changed = client.put(OWN, json={"threshold": 200, "hysteresis": 0}, headers=member.headers).json()
        assert (changed["threshold"], changed["hysteresis"], changed["rearm_at"]) == (200, 0, 200)
        response = client.delete(OWN, headers=member.headers)
        assert response.status_code == 204, response.text
        assert client.get(OWN, headers=member.headers).status_code == 404
        # Removing what is not there is no change: nothing more is audited.
        assert client.delete(OWN, headers=member.headers).status_code == 204
        target = str(member.id)
        assert audit_trail(session) == [
            ("balance_alert.set", "user", target, None, {"threshold": 100, "hysteresis": 10}),
            (
                "balance_alert.set",
                "user",
                target,
                {"threshold": 100, "hysteresis": 10},
                {"threshold": 200, "hysteresis": 0},
            ),
            ("balance_alert.remove", "user", target, {"threshold": 200, "hysteresis": 0}, None),
        ]

    @pytest.mark.parametrize(("threshold", "hysteresis"), [(100, 10), (1000, 100), (25, 2), (9, 1), (1, 1)])
    def test_the_hysteresis_defaults_to_a_tenth_of_the_threshold_and_at_least_one_token(
        self, client: TestClient, tenant: Tenant, make_caller: MakeCaller, threshold: int, hysteresis: int
    ) -> None:
        member = make_caller(Role.member, tenant)
        body = client.put(OWN, json={"threshold": threshold}, headers=member.headers).json()
        assert (body["hysteresis"], body["rearm_at"]) == (hysteresis, threshold + hysteresis)

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"threshold": 0},
            {"threshold": -5},
            {"threshold": "100"},
            {"threshold": 10.5},
            {"threshold": True},
            {"threshold": 10**15 + 1},
            {"threshold": 100, "hysteresis": -1},
            {"threshold": 100, "hysteresis": "5"},
            {"threshold": 100, "armed": False},
        ],
    )
    def test_invalid_settings_are_refused_with_a_422_problem(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller, body: dict[str, Any]
    ) -> None:
        admin = make_caller(Role.tenant_admin, tenant)
        for path in (OWN, user_alert(admin.id), pool_alert(tenant.id)):
            response = client.put(path, json=body, headers=admin.headers)
            assert response.status_code == 422, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "validation_error"
        assert audit_trail(session) == []

    def test_the_same_settings_again_change_nothing(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller
    ) -> None:
        member = make_caller(Role.member, tenant)
        first = client.put(OWN, json={"threshold": 50}, headers=member.headers).json()
        # The default hysteresis given explicitly is the same setting.
        again = client.put(OWN, json={"threshold": 50, "hysteresis": 5}, headers=member.headers).json()
        assert again == first
        assert len(audit_trail(session)) == 1

    def test_writing_needs_balance_alert_write_and_reading_needs_balance_read(
        self, client: TestClient, tenant: Tenant, make_caller: MakeCaller
    ) -> None:
        reader = make_caller(Role.member, tenant, scopes=[Scope.balance_read])
        for method in ("PUT", "DELETE"):
            response = client.request(method, OWN, json={"threshold": 5}, headers=reader.headers)
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "insufficient_scope"
        assert client.get(OWN, headers=reader.headers).status_code == 404  # allowed; none is set
        writer = make_caller(Role.member, tenant, scopes=[Scope.balance_alert_write])
        assert client.put(OWN, json={"threshold": 5}, headers=writer.headers).status_code == 200
        assert client.get(OWN, headers=writer.headers).json()["code"] == "insufficient_scope"

    def test_a_staff_account_belongs_to_no_tenant_and_gets_no_alert(
        self, client: TestClient, session: Session, make_caller: MakeCaller
    ) -> None:
        operator = make_caller(Role.operator)
        finance = create_user(session, role=Role.finance)
        for path in (OWN, user_alert(finance.id)):
            response = client.put(path, json={"threshold": 5}, headers=operator.headers)
            assert response.status_code == 422, response.text
            assert response.json()["code"] == "balance_alert_without_tenant"
        assert audit_trail(session) == []

    def test_a_tenant_admin_sets_its_users_and_its_pools_alerts_and_a_member_neither(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller
    ) -> None:
        admin = make_caller(Role.tenant_admin, tenant)
        member = make_caller(Role.member, tenant)
        for path in (user_alert(member.id), pool_alert(tenant.id)):
            response = client.put(path, json={"threshold": 30}, headers=admin.headers)
            assert response.status_code == 200, response.text
            assert client.get(path, headers=admin.headers).json()["threshold"] == 30
            for method in ("GET", "PUT", "DELETE"):
                refused = client.request(method, path, json={"threshold": 1}, headers=member.headers)
                assert refused.status_code == 403, refused.text
        pool = client.get(pool_alert(tenant.id), headers=admin.headers).json()
        assert (pool["account"], pool["user_id"], pool["tenant_id"]) == ("tenant_pool", None, tenant.id)
        # What the admin set on the member is the member's own alert.
        assert client.get(OWN, headers=member.headers).json()["threshold"] == 30
        assert client.delete(pool_alert(tenant.id), headers=admin.headers).status_code == 204
        assert [(a, t, i) for a, t, i, _, _ in audit_trail(session)] == [
            ("balance_alert.set", "user", str(member.id)),
            ("balance_alert.set", "tenant_pool", str(tenant.id)),
            ("balance_alert.remove", "tenant_pool", str(tenant.id)),
        ]


class TestCrossings:
    def test_one_alert_per_crossing_however_many_debits_follow(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller, operator: Caller
    ) -> None:
        member = make_caller(Role.member, tenant)
        fund(session, account_id=member.user.account_id, amount=100)
        assert client.put(OWN, json={"threshold": 50}, headers=member.headers).status_code == 200
        for amount in (-30, -20):  # 70, then 50: not below the threshold yet
            adjust(client, operator.headers, user_id=member.id, amount=amount)
        assert low_balance_events(session, tenant.id) == []
        for amount in (-1, -10, -9, -30):  # 49 (the crossing), 39, 30, 0
            adjust(client, operator.headers, user_id=member.id, amount=amount)
        assert low_balance_events(session, tenant.id) == [
            {
                "account": "user",
                "tenant_id": tenant.id,
                "user_id": member.id,
                "available": 49,
                "threshold": 50,
                "rearm_at": 55,
            }
        ]
        alert = client.get(OWN, headers=member.headers).json()
        assert (alert["armed"], alert["available"]) == (False, 0)
        assert alert["fired_at"] is not None

    def test_it_rearms_only_at_threshold_plus_hysteresis_and_the_next_drop_fires_again(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller, operator: Caller
    ) -> None:
        member = make_caller(Role.member, tenant)
        fund(session, account_id=member.user.account_id, amount=100)
        client.put(OWN, json={"threshold": 50, "hysteresis": 20}, headers=member.headers)
        adjust(client, operator.headers, user_id=member.id, amount=-60)  # 40: fires
        assert len(low_balance_events(session, tenant.id)) == 1
        adjust(client, operator.headers, user_id=member.id, amount=29)  # 69: one short of the re-arm level
        assert client.get(OWN, headers=member.headers).json()["armed"] is False
        adjust(client, operator.headers, user_id=member.id, amount=-29)  # 40 again: still disarmed, no event
        adjust(client, operator.headers, user_id=member.id, amount=29)  # 69
        assert len(low_balance_events(session, tenant.id)) == 1
        adjust(client, operator.headers, user_id=member.id, amount=1)  # 70: re-armed
        rearmed = client.get(OWN, headers=member.headers).json()
        assert rearmed["armed"] is True
        assert rearmed["rearmed_at"] is not None
        adjust(client, operator.headers, user_id=member.id, amount=-21)  # 49: the next crossing
        assert [e["available"] for e in low_balance_events(session, tenant.id)] == [40, 49]

    def test_an_alert_set_below_its_threshold_fires_at_once_and_a_changed_one_keeps_its_state(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller
    ) -> None:
        member = make_caller(Role.member, tenant)
        fund(session, account_id=member.user.account_id, amount=40)
        body = client.put(OWN, json={"threshold": 50}, headers=member.headers).json()
        assert body["armed"] is False
        assert [e["available"] for e in low_balance_events(session, tenant.id)] == [40]
        # Moving the line is no new crossing while the account stays below it.
        assert client.put(OWN, json={"threshold": 45}, headers=member.headers).json()["armed"] is False
        # Below the new re-arm level (30 + 3 <= 40): re-armed by the change itself.
        assert client.put(OWN, json={"threshold": 30}, headers=member.headers).json()["armed"] is True
        # Armed and above the new line: moved up past the balance, it fires.
        assert client.put(OWN, json={"threshold": 41}, headers=member.headers).json()["armed"] is False
        assert [e["available"] for e in low_balance_events(session, tenant.id)] == [40, 40]
        # Removed and set again: a fresh alert, armed, and the account is below it.
        client.delete(OWN, headers=member.headers)
        assert client.put(OWN, json={"threshold": 41}, headers=member.headers).json()["armed"] is False
        assert len(low_balance_events(session, tenant.id)) == 3

    def test_a_reversal_of_a_recharge_fires_the_alert(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller, operator: Caller
    ) -> None:
        member = make_caller(Role.member, tenant)
        fund(session, account_id=member.user.account_id, amount=10)
        recharge = client.post(
            "/admin/v1/recharges",
            json={"user_id": member.id, "amount": 100, "reason": "top-up"},
            headers={**operator.headers, "Idempotency-Key": uuid.uuid4().hex},
        )
        assert recharge.status_code == 201, recharge.text
        client.put(OWN, json={"threshold": 50}, headers=member.headers)
        reversal = client.post(
            f"/admin/v1/transactions/{recharge.json()['transaction_id']}/reversal",
            json={"reason": "sent by mistake"},
            headers={**operator.headers, "Idempotency-Key": uuid.uuid4().hex},
        )
        assert reversal.status_code == 201, reversal.text
        assert [e["available"] for e in low_balance_events(session, tenant.id)] == [10]

    def test_a_pool_alert_fires_on_the_tenants_recharges_and_batches_and_rearms_when_staff_fill_the_pool(
        self, client: TestClient, session: Session, tenant: Tenant, make_caller: MakeCaller, operator: Caller
    ) -> None:
        admin = make_caller(Role.tenant_admin, tenant)
        member = make_caller(Role.member, tenant)
        fund(session, account_id=tenant.pool_account_id, amount=1000)
        client.put(pool_alert(tenant.id), json={"threshold": 500, "hysteresis": 100}, headers=admin.headers)

        def hand_out(amount: int) -> None:
            response = client.post(
                "/admin/v1/recharges",
                json={"user_id": member.id, "amount": amount, "reason": "allowance"},
                headers={**admin.headers, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert response.status_code == 201, response.text

        def batch(amount: int) -> None:
            response = client.post(
                "/admin/v1/recharges/batch",
                params={"reason": "allowances"},
                content=f"user_id,amount\n{member.id},{amount}\n{admin.id},{amount}\n",
                headers={**admin.headers, "Idempotency-Key": uuid.uuid4().hex, "Content-Type": "text/csv"},
            )
            assert response.status_code == 201, response.text

        hand_out(400)  # the pool at 600
        assert low_balance_events(session, tenant.id) == []
        hand_out(200)  # 400: fires
        batch(50)  # 300: already fired
        pool_event = {
            "account": "tenant_pool",
            "tenant_id": tenant.id,
            "user_id": None,
            "available": 400,
            "threshold": 500,
            "rearm_at": 600,
        }
        assert low_balance_events(session, tenant.id) == [pool_event]
        # Staff fill the pool to the re-arm level; the tenant's next batch takes it below again.
        filled = client.post(
            "/admin/v1/recharges",
            json={"tenant_id": tenant.id, "amount": 300, "reason": "plan top-up"},
            headers={**operator.headers, "Idempotency-Key": uuid.uuid4().hex},
        )
        assert filled.status_code == 201, filled.text
        assert client.get(pool_alert(tenant.id), headers=admin.headers).json()["armed"] is True
        batch(60)  # 480
        assert low_balance_events(session, tenant.id) == [pool_event, {**pool_event, "available": 480}]

    def test_without_an_events_url_the_alert_still_fires_and_disarms_but_nothing_is_queued(
        self, client: TestClient, session: Session, make_caller: MakeCaller, operator: Caller
    ) -> None:
        quiet = create_tenant(session)  # names no events URL
        member = make_caller(Role.member, quiet)
        fund(session, account_id=member.user.account_id, amount=100)
        client.put(OWN, json={"threshold": 50}, headers=member.headers)
        adjust(client, operator.headers, user_id=member.id, amount=-60)
        assert low_balance_events(session, quiet.id) == []
        alert = alert_of(session, member.user.account_id)
        assert alert.armed is False
        assert alert.fired_at is not None
        # Naming a URL later sends no old crossing; the next one is sent.
        name_events_url(session, quiet.id)
        adjust(client, operator.headers, user_id=member.id, amount=-10)
        assert low_balance_events(session, quiet.id) == []
        adjust(client, operator.headers, user_id=member.id, amount=25)  # 55: re-armed
        adjust(client, operator.headers, user_id=member.id, amount=-10)  # 45
        assert [e["available"] for e in low_balance_events(session, quiet.id)] == [45]

    def test_a_removed_alert_never_fires(
        self,
        client: TestClient,
        session: Session,
        session_factory: sessionmaker[Session],
        tenant: Tenant,
        make_caller: MakeCaller,
        operator: Caller,
    ) -> None:
        member = make_caller(Role.member, tenant)
        fund(session, account_id=member.user.account_id, amount=100)
        client.put(OWN, json={"threshold": 50}, headers=member.headers)
        client.delete(OWN, headers=member.headers)
        adjust(client, operator.headers, user_id=member.id, amount=-90)
        with unit_of_work(session_factory) as other:
            assert evaluation.sweep(other, limit=100).moved == 0
        assert low_balance_events(session, tenant.id) == []
        assert alert_of(session, member.user.account_id).armed is True

    def test_concurrent_debits_of_a_pool_fire_exactly_once(
        self, session: Session, session_factory: sessionmaker[Session], tenant: Tenant
    ) -> None:
        """Ten tenant-admin recharges drain the pool at once, while two sweepers run their passes: the crossing
        is one event, whoever evaluates it."""
        admin = create_user(session, tenant=tenant, role=Role.tenant_admin)
        users = [create_user(session, tenant=tenant) for _ in range(10)]
        fund(session, account_id=tenant.pool_account_id, amount=1000)
        with unit_of_work(session_factory) as setup:
            target = alerts.pool_account(setup, tenant_id=tenant.id, tenant_scope=None)
            alerts.set_alert(setup, context=None, target=target, data=BalanceAlertSet(threshold=550))
        context = _context_of(admin, tenant)
        barrier = threading.Barrier(len(users) + 2)
        errors: list[BaseException] = []
        done = threading.Event()

        def debit(user: User) -> None:
            try:
                barrier.wait(timeout=30)
                with unit_of_work(session_factory) as s:
                    recharge_service.submit_recharge(
                        s,
                        context=context,
                        data=RechargeCreate(user_id=user.id, amount=100, reason="race"),
                        idempotency_key=uuid.uuid4().hex,
                        policy=None,
                    )
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)

        def sweeper() -> None:
            try:
                barrier.wait(timeout=30)
                while not done.is_set():
                    with unit_of_work(session_factory) as s:
                        evaluation.sweep(s, limit=100)
            except BaseException as exc:
                errors.append(exc)

        debits = [threading.Thread(target=debit, args=(user,)) for user in users]
        sweepers = [threading.Thread(target=sweeper) for _ in range(2)]
        for thread in debits + sweepers:
            thread.start()
        for thread in debits:
            thread.join(timeout=60)
        done.set()
        for thread in sweepers:
            thread.join(timeout=60)
        assert errors == []
        events = low_balance_events(session, tenant.id)
        assert len(events) == 1, events
        assert events[0]["available"] < 550
        assert alert_of(session, tenant.pool_account_id).armed is False


class TestDelivery:
    @pytest.fixture
    def receiver(self) -> Iterator[Receiver]:
        with serve_receiver() as rec:
            yield rec

    def test_a_balance_low_event_reaches_a_loopback_receiver_signed(
        self,
        client: TestClient,
        session: Session,
        session_factory: sessionmaker[Session],
        database_url: str,
        redis_url: str,
        receiver: Receiver,
        make_caller: MakeCaller,
        operator: Caller,
    ) -> None:
        tenant = create_tenant(session)
        name_events_url(session, tenant.id, receiver.url("/events"))
        member = make_caller(Role.member, tenant)
        fund(session, account_id=member.user.account_id, amount=20)
        client.put(OWN, json={"threshold": 10, "hysteresis": 0}, headers=member.headers)
        adjust(client, operator.headers, user_id=member.id, amount=-15)

        settings: Settings = make_settings(database_url, redis_url, webhook_allowed_networks=["127.0.0.0/8"])
        assert sender.deliver_due(session_factory, settings=settings) == 1
        [call] = receiver.calls_to("/events")
        assert webhooks.verify(tenant_secret(session, tenant.id), call.headers, call.body)
        [listed] = client.get(f"/admin/v1/tenants/{tenant.id}/events", headers=operator.headers).json()
        assert listed["event_type"] == "balance.low"
        assert listed["status"] == "delivered"
        assert call.body == webhooks.encode_body(listed["payload"])
        assert listed["payload"]["data"] == {
            "account": "user",
            "tenant_id": tenant.id,
            "user_id": member.id,
            "available": 5,
            "threshold": 10,
            "rearm_at": 10,
        }


def _context_of(user: User, tenant: Tenant) -> RequestContext:
    """What a request by `user` (of `tenant`) passes its services."""
    principal = Principal(
        user_id=user.id,
        email=user.email,
        role=Role(user.role),
        tenant_id=user.tenant_id,
        account_id=user.account_id,
        plan=tenant.plan,
        scopes=scopes_for_role(user.role),
    )
    return RequestContext(principal=principal, request_id=None, ip="127.0.0.1")
