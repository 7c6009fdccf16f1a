"""The SDK's credit lots, user labels and recurring grants against a live `facemint serve`: recharges and batch rows
with lot terms (priority, expiry) seen in balances, the ledger log and the liability report; users labelled and
filtered by label; a pool-funded tenant grant made, listed, changed and run by the workers' scheduler (in this
process), its periods read; a platform-funded grant held for a second operator and approved through the SDK; and
the new problem types as typed errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from facemint.tenants.orm import Tenant
from facemint.users.orm import Role
from facemint.worker.granting import grant_once
from facemint_client import (
    AsyncFacemint,
    Facemint,
    GrantChanged,
    InvalidGrant,
    InvalidLotTerms,
    SelfApproval,
)
from facemint_client.admin_models import Approval, BatchResult, Grant, Recharge
from facemint_client.models import NextExpiry
from tests.factories import fund
from tests.sdk.conftest import MakePerson, balance
from tests.sdk.live import APPROVAL_THRESHOLD

ClientFor = Callable[..., Facemint]


def _later(days: float) -> datetime:
    """A whole second `days` from now, in UTC (the API answers times as it stores them)."""
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def _email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.test"


# --- credit lots ---------------------------------------------------------------------------------------------


def test_a_recharge_with_lot_terms_shows_in_the_balance_the_ledger_and_the_liability(
    client_for: ClientFor, make_person: MakePerson
) -> None:
    member = make_person(Role.member)
    staff = client_for(make_person(Role.operator)).admin
    expires = _later(7)
    promo = staff.recharges.create(30, reason="promo", user_id=member.user.id, priority=10, expires_at=expires)
    paid = staff.recharges.create(20, reason="paid", user_id=member.user.id)
    assert isinstance(promo, Recharge)
    assert isinstance(paid, Recharge)
    assert [(lot.source, lot.priority, lot.expires_at, lot.amount) for lot in promo.lots] == [
        ("recharge", 10, expires, 30)
    ]
    assert [(lot.priority, lot.expires_at) for lot in paid.lots] == [(50, None)]

    own = client_for(member).account.balance()
    assert (own.balance, own.available) == (50, 50)
    # In spending order: the promotion (priority 10) before the paid tokens (50).
    assert [(lot.id, lot.remaining, lot.available) for lot in own.lots] == [
        (promo.lots[0].id, 30, 30),
        (paid.lots[0].id, 20, 20),
    ]
    assert own.next_expiry == NextExpiry(expires_at=expires, amount=30)
    (listed,) = staff.balances.list(user_id=member.user.id)
    assert (listed.lots, listed.next_expiry) == (own.lots, own.next_expiry)

    entries = {row.transaction_id: row for row in staff.finance.ledger(user_id=member.user.id)}
    promo_lots = entries[promo.transaction_id].lots
    assert promo_lots is not None
    assert [(lot["lot_id"], lot["tokens"], lot["priority"]) for lot in promo_lots] == [(promo.lots[0].id, 30, 10)]

    report = staff.finance.liability(expiry_bucket="day")
    assert report.by_expiry is not None
    assert sum(bucket.balance for bucket in report.by_expiry) == report.total.balance
    (day,) = [bucket for bucket in report.by_expiry if bucket.expires_from == expires.date()]
    assert day.balance == 30
    assert day.expires_before == expires.date() + timedelta(days=1)
    assert staff.finance.liability(at=datetime.now(UTC)).by_expiry is None  # a past instant has no split
    rows = staff.finance.daily_report().rows
    assert rows
    assert all(
        row.closing == row.opening + row.recharged - row.consumed + row.adjustments - row.expired for row in rows
    )


def test_batch_rows_carry_their_own_lot_terms_from_csv_columns_and_json_items(
    client_for: ClientFor, make_person: MakePerson, engine: Engine, tmp_path: Path
) -> None:
    alice, bob, carol = (make_person(Role.member) for _ in range(3))
    staff = client_for(make_person(Role.operator)).admin
    expires = _later(3)
    csv = tmp_path / "promo.csv"
    csv.write_text(
        "email,amount,expires_at,priority\n"
        f"{alice.user.email},10,{expires.isoformat()},5\n"
        f"{bob.user.email},20,,\n"
        f"{carol.user.email},30,2020-01-01T00:00:00Z,5\n"
    )
    result = staff.recharges.batch(csv=csv, reason="promo", mode="partial")
    assert isinstance(result, BatchResult)
    assert (result.applied, result.total_amount) == (2, 30)
    assert [(f.row, f.code) for f in result.failed] == [(3, "invalid_expiry")]
    items = [{"user_id": carol.user.id, "amount": 7, "priority": 20, "expires_at": expires}]  # a datetime, sent ISO
    assert isinstance(staff.recharges.batch(items, reason="json"), BatchResult)

    lots = {
        person.user.id: [(lot.priority, lot.expires_at, lot.remaining) for lot in found.lots]
        for person in (alice, bob, carol)
        for found in staff.balances.list(user_id=person.user.id)
    }
    assert lots == {
        alice.user.id: [(5, expires, 10)],
        bob.user.id: [(50, None, 20)],
        carol.user.id: [(20, expires, 7)],
    }
    assert balance(engine, carol.account_id) == (7, 0)


def test_an_approved_recharge_whose_expiry_passed_while_it_waited_is_invalid_lot_terms(
    client_for: ClientFor, make_person: MakePerson, engine: Engine
) -> None:
    member = make_person(Role.member)
    requester, approver = (client_for(make_person(Role.operator)).admin for _ in range(2))
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    held = requester.recharges.create(
        APPROVAL_THRESHOLD + 1, reason="big promo", user_id=member.user.id, expires_at=expires
    )
    assert isinstance(held, Approval)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    with pytest.raises(InvalidLotTerms) as raised:
        approver.approvals.approve(held.id)
    assert (raised.value.status, raised.value.code) == (422, "invalid_lot_terms")
    assert approver.approvals.get(held.id).status == "pending"
    assert balance(engine, member.account_id) == (0, 0)


# --- user labels ---------------------------------------------------------------------------------------------


def test_users_are_made_with_labels_filtered_by_one_and_relabelled(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant
) -> None:
    users = client_for(make_person(Role.tenant_admin, tenant=tenant)).admin.users
    vip = users.create(_email("vip"), tenant_id=tenant.id, labels=["VIP", "beta", "vip"])
    plain = users.create(_email("plain"), tenant_id=tenant.id)
    assert (vip.labels, plain.labels) == (["beta", "vip"], [])
    assert [u.id for u in users.list(tenant_id=tenant.id, label="vip")] == [vip.id]
    assert [u.id for u in users.list(tenant_id=tenant.id, label="Beta")] == [vip.id]
    assert users.update(plain.id, labels=["vip"]).labels == ["vip"]
    assert users.update(vip.id, name="Vera").labels == ["beta", "vip"]  # labels left out stay
    assert [u.id for u in users.list(tenant_id=tenant.id, label="vip")] == [plain.id, vip.id]
    assert users.update(vip.id, labels=[]).labels == []
    assert users.get(vip.id).labels == []


# --- recurring grants ----------------------------------------------------------------------------------------


def test_a_pool_funded_tenant_grant_is_made_listed_changed_and_its_periods_read(
    client_for: ClientFor,
    make_person: MakePerson,
    tenant: Tenant,
    session: Session,
    session_factory: sessionmaker[Session],
) -> None:
    admin = client_for(make_person(Role.tenant_admin, tenant=tenant)).admin
    vip = admin.users.create(_email("vip"), tenant_id=tenant.id, labels=["vip"])
    admin.users.create(_email("plain"), tenant_id=tenant.id)
    grant = admin.grants.create(
        "vip daily", scope="tenant", label="vip", amount=5, period="day", funding="tenant_pool"
    )  # the tenant admin's own tenant; small enough to apply at once
    assert isinstance(grant, Grant)
    assert (grant.tenant_id, grant.label, grant.priority, grant.enabled, grant.approval_id) == (
        tenant.id,
        "vip",
        10,
        True,
        None,
    )
    assert [g.id for g in admin.grants.list(tenant_id=tenant.id)] == [grant.id]
    assert admin.grants.list(scope="plan").to_list() == []
    assert admin.grants.periods(grant.id).to_list() == []

    grant_once(session_factory, chunk_size=100)  # the pool is empty: nobody is granted, the shortfall recorded
    (short,) = admin.grants.periods(grant.id)
    assert (short.granted_accounts, short.shortfall_needed, short.shortfall_available) == (0, 5, 0)
    fund(session, account_id=tenant.pool_account_id, amount=100)
    grant_once(session_factory, chunk_size=100)
    (period,) = admin.grants.periods(grant.id)
    assert period.id == short.id
    assert (period.granted_accounts, period.granted_tokens, period.shortfall_needed) == (1, 5, None)
    assert period.period_end - period.period_start == timedelta(days=1)

    (granted,) = admin.balances.list(user_id=vip.id)
    assert [(lot.source, lot.priority, lot.expires_at, lot.remaining) for lot in granted.lots] == [
        ("grant", 10, period.period_end, 5)
    ]
    assert granted.next_expiry == NextExpiry(expires_at=period.period_end, amount=5)
    assert admin.balances.pool(tenant.id).available == 95

    renamed = admin.grants.update(grant.id, name="vip daily (renamed)")
    assert isinstance(renamed, Grant)
    assert (renamed.name, renamed.label, renamed.ends_at) == ("vip daily (renamed)", "vip", None)  # the rest stays
    ends = _later(30)
    ending = admin.grants.update(grant.id, ends_at=ends)
    assert isinstance(ending, Grant)
    assert ending.ends_at == ends
    opened = admin.grants.update(grant.id, ends_at=None, label=None)  # no end again, every user of the tenant
    assert isinstance(opened, Grant)
    assert (opened.ends_at, opened.label) == (None, None)
    assert admin.grants.get(grant.id) == opened


def test_a_platform_grant_waits_for_a_second_operator_through_the_sdk(
    client_for: ClientFor, make_person: MakePerson, tenant: Tenant
) -> None:
    requester, approver = (client_for(make_person(Role.operator)).admin for _ in range(2))
    held = requester.grants.create(
        "launch week", scope="tenant", tenant_id=tenant.id, amount=50, period="week", funding="platform"
    )
    assert isinstance(held, Approval)
    assert (held.kind, held.status, held.tenant_id, held.grant_id) == ("grant", "pending", tenant.id, None)
    assert requester.grants.list(tenant_id=tenant.id).to_list() == []  # nothing made until approved
    with pytest.raises(SelfApproval):
        requester.approvals.approve(held.id)
    assert [a.id for a in approver.approvals.list(kind="grant", status="pending")] == [held.id]
    assert approver.approvals.get(held.id).request["change"] == "create"

    decided = approver.approvals.approve(held.id, note="launch promo checked")
    assert (decided.status, decided.decision_note) == ("approved", "launch promo checked")
    assert decided.grant_id is not None
    (grant,) = requester.grants.list(tenant_id=tenant.id)
    assert (grant.id, grant.funding, grant.amount, grant.approval_id) == (decided.grant_id, "platform", 50, held.id)

    # A change that lets it mint more is held too; one that mints less applies at once.
    raise_to_60 = requester.grants.update(grant.id, amount=60)
    raise_to_70 = requester.grants.update(grant.id, amount=70)
    assert isinstance(raise_to_60, Approval)
    assert isinstance(raise_to_70, Approval)
    assert requester.grants.get(grant.id).amount == 50  # the current terms run until one is approved
    approver.approvals.approve(raise_to_60.id)
    assert requester.grants.get(grant.id).amount == 60
    with pytest.raises(GrantChanged) as raised:  # asked for against amount 50: nobody saw 70 over 60
        approver.approvals.approve(raise_to_70.id)
    assert (raised.value.status, raised.value.code) == (409, "grant_changed")
    assert approver.approvals.get(raise_to_70.id).status == "pending"
    lowered = requester.grants.update(grant.id, amount=40, enabled=False)
    assert isinstance(lowered, Grant)
    assert (lowered.amount, lowered.enabled) == (40, False)


def test_a_grant_that_cannot_be_made_is_invalid_grant(client_for: ClientFor, make_person: MakePerson) -> None:
    staff = client_for(make_person(Role.operator)).admin
    with pytest.raises(InvalidGrant) as raised:
        staff.grants.create(
            "too late", scope="plan", plan="free", amount=5, period="day", funding="platform", ends_at=_later(-1)
        )
    assert (raised.value.status, raised.value.code) == (422, "invalid_grant")
    assert staff.approvals.list(kind="grant").to_list() == []


def test_the_async_client_makes_and_reads_grants_too(
    async_client_for: Callable[..., AsyncFacemint], make_person: MakePerson, tenant: Tenant, session: Session
) -> None:
    fund(session, account_id=tenant.pool_account_id, amount=10)
    admin = make_person(Role.tenant_admin, tenant=tenant)

    async def scenario() -> tuple[Grant | Approval, list[int], int]:
        async with async_client_for(admin) as client:
            made = await client.admin.grants.create(
                "weekly", scope="tenant", amount=3, period="week", funding="tenant_pool"
            )
            listed = [g.id async for g in client.admin.grants.list()]
            periods = await client.admin.grants.periods(made.id).to_list()
            return made, listed, len(periods)

    made, listed, periods = asyncio.run(scenario())
    assert isinstance(made, Grant)
    assert (listed, periods) == ([made.id], 0)
