"""The recurring grants' scheduler (`facemint.worker.granting.grant_once`, as the workers run it) against real
Postgres: a run twice, a late run, two runners at once, plan grants across tenants, a tenant's labelled users,
pool-funded grants with enough and too little in the pool, platform-funded grants, users who become eligible
mid-period, chunks, expiry at the period's end through the lots sweep, and the reconciliation after all of it."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from billing.grants.schemas import Period
from billing.ledger import holds as ledger_holds
from billing.ledger import lots
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, LotSource
from facemint.grants import service as grant_service
from facemint.grants.orm import CreditGrant, Funding, GrantScope
from facemint.grants.schemas import GrantCreate
from facemint.reports.service import reconcile_all
from facemint.tenants.orm import Plan, Tenant, TenantStatus
from facemint.users import service as user_service
from facemint.users.orm import Role, User, UserStatus
from facemint.users.schemas import UserUpdate
from facemint.worker.granting import GrantReport, grant_once
from tests.factories import approved_platform_grant, create_tenant, create_user, fund

CEILING = 1_000_000


def make_grant(session: Session, **fields: Any) -> CreditGrant:
    """A grant in force: a pool-funded one made directly, a platform-funded one approved by a second operator."""
    values: dict[str, Any] = {"name": "test grant", "amount": 5, "period": Period.day} | fields
    data = GrantCreate(**values)
    if data.funding is Funding.platform:
        return approved_platform_grant(session, data, ceiling=CEILING)
    grant = grant_service.create(session, context=None, data=data, ceiling=CEILING)
    session.commit()
    return grant


def plan_grant(session: Session, plan: Plan = Plan.free, **fields: Any) -> CreditGrant:
    return make_grant(session, scope=GrantScope.plan, plan=plan, funding=Funding.platform, **fields)


def tenant_grant(
    session: Session, tenant: Tenant, funding: Funding = Funding.tenant_pool, **fields: Any
) -> CreditGrant:
    return make_grant(session, scope=GrantScope.tenant, tenant_id=tenant.id, funding=funding, **fields)


def users(session: Session, tenant: Tenant, count: int, *, labels: list[str] | None = None) -> list[User]:
    made = [create_user(session, tenant=tenant, password=None) for _ in range(count)]
    if labels:
        for user in made:
            user_service.update(session, context=None, user=user, data=UserUpdate(labels=labels))
        session.commit()
    return made


def run(sessions: sessionmaker[Session], *, chunk_size: int = 5000) -> GrantReport:
    return grant_once(sessions, chunk_size=chunk_size)


@dataclass(frozen=True)
class Awarded:
    """One account's award for a grant, with the lot it got."""

    account_id: int
    period_start: datetime
    awarded_at: datetime
    amount: int
    source: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None


def awarded(session: Session, grant: CreditGrant) -> list[Awarded]:
    session.rollback()  # a fresh snapshot
    rows = session.execute(
        text(
            """
            SELECT a.account_id, a.period_start, a.created_at AS awarded_at, l.amount, l.source, l.priority,
                   l.effective_at, l.expires_at
            FROM grant_awards a
            JOIN credit_lots l ON l.transaction_id = a.transaction_id AND l.account_id = a.account_id
            WHERE a.grant_id = :grant ORDER BY a.account_id, l.id
            """
        ),
        {"grant": grant.id},
    )
    return [Awarded(**row._mapping) for row in rows]


def balances(session: Session, *accounts: int) -> list[int]:
    session.rollback()
    rows = session.execute(
        text("SELECT id, balance FROM ledger_accounts WHERE id = ANY(:ids)"), {"ids": list(accounts)}
    ).all()
    found = {row.id: row.balance for row in rows}
    return [found[account] for account in accounts]


def journal(session: Session) -> tuple[int, int]:
    """(transactions, entries): any posting shows here."""
    session.rollback()
    row = session.execute(
        text("SELECT (SELECT count(*) FROM ledger_transactions), (SELECT count(*) FROM ledger_entries)")
    ).one()
    return int(row[0]), int(row[1])


def period_row(session: Session, grant: CreditGrant) -> dict[str, Any]:
    session.rollback()
    return dict(
        session.execute(text("SELECT * FROM credit_grant_periods WHERE grant_id = :g"), {"g": grant.id})
        .mappings()
        .one()
    )


class TestOncePerPeriod:
    def test_a_run_twice_grants_each_account_once_and_changes_nothing_the_second_time(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        tenant = create_tenant(session)
        members = users(session, tenant, 3)
        grant = plan_grant(session, amount=5)
        first = run(session_factory)
        assert (first.granted_accounts, first.granted_tokens, first.transactions) == (3, 15, 1)
        before = (journal(session), balances(session, *(u.account_id for u in members)))
        second = run(session_factory)
        assert (second.granted_accounts, second.transactions) == (0, 0)
        assert (journal(session), balances(session, *(u.account_id for u in members))) == before
        assert before[1] == [5, 5, 5]
        assert len(awarded(session, grant)) == 3

    def test_a_late_run_grants_the_current_period_once_expiring_at_its_end(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        """The grant began three days ago and no run reached its earlier periods: a run now grants today's period
        only (the past ones would be born expired), and its lot expires at today's end, not a day after the run."""
        tenant = create_tenant(session)
        (member,) = users(session, tenant, 1)
        three_days_ago = datetime.now(UTC) - timedelta(days=3)
        daily = plan_grant(session, amount=5, starts_at=three_days_ago)
        monthly = plan_grant(session, amount=7, period=Period.month, starts_at=three_days_ago)
        run(session_factory)
        run(session_factory)
        for grant, period, amount in ((daily, Period.day, 5), (monthly, Period.month, 7)):
            (award,) = awarded(session, grant)
            start, end = period.bounds(award.awarded_at)
            assert (award.period_start, award.expires_at) == (start, end)
            assert start <= award.effective_at < end  # written when it takes effect, late in the period
            assert (award.amount, award.source, award.priority) == (amount, LotSource.grant, 10)
        assert balances(session, member.account_id) == [12]

    def test_two_runners_at_once_grant_each_account_once(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        tenant = create_tenant(session, plan=Plan.pro)
        members = users(session, tenant, 12)
        fund(session, account_id=tenant.pool_account_id, amount=1_000)
        grants = [plan_grant(session, Plan.pro, amount=3), tenant_grant(session, tenant, amount=4)]
        start = threading.Barrier(4)
        reports: list[GrantReport] = []

        def runner() -> None:
            start.wait()
            reports.append(run(session_factory, chunk_size=5))

        threads = [threading.Thread(target=runner) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(reports) == 4
        assert not [grant for report in reports for grant in report.failed]
        assert sum(report.granted_accounts for report in reports) == 24
        assert balances(session, *(u.account_id for u in members)) == [7] * 12
        assert balances(session, tenant.pool_account_id) == [1_000 - 48]
        for grant in grants:
            assert sorted(a.account_id for a in awarded(session, grant)) == sorted(u.account_id for u in members)

    def test_chunks_are_transactions_of_their_own_and_grant_everyone_once(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        tenant = create_tenant(session)
        members = users(session, tenant, 5)
        grant = plan_grant(session, amount=2)
        report = run(session_factory, chunk_size=2)
        assert (report.granted_accounts, report.transactions) == (5, 3)
        assert balances(session, *(u.account_id for u in members)) == [2] * 5
        assert period_row(session, grant)["granted_accounts"] == 5

    def test_a_user_eligible_mid_period_gets_the_current_period_on_the_next_run(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        tenant = create_tenant(session)
        (early,) = users(session, tenant, 1)
        frozen = create_user(session, tenant=tenant, password=None)
        frozen.status = UserStatus.frozen.value
        session.commit()
        grant = plan_grant(session, amount=5)
        run(session_factory)
        (late,) = users(session, tenant, 1)
        session.execute(text("UPDATE users SET status = 'active' WHERE id = :id"), {"id": frozen.id})
        session.commit()
        transactions_before = journal(session)[0]
        report = run(session_factory)
        assert (report.granted_accounts, report.transactions) == (2, 1)
        assert journal(session)[0] == transactions_before + 1
        assert balances(session, early.account_id, late.account_id, frozen.account_id) == [5, 5, 5]
        assert len({a.period_start for a in awarded(session, grant)}) == 1
        assert period_row(session, grant)["granted_tokens"] == 15


class TestWhoIsGranted:
    def test_a_plan_grant_reaches_every_active_user_of_every_active_tenant_on_the_plan(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        free_a, free_b = create_tenant(session), create_tenant(session)
        pro = create_tenant(session, plan=Plan.pro)
        suspended = create_tenant(session)
        suspended.status = TenantStatus.suspended.value
        session.commit()
        admin_a = create_user(session, tenant=free_a, role=Role.tenant_admin, password=None)
        (member_a,) = users(session, free_a, 1)
        (member_b,) = users(session, free_b, 1)
        (member_pro,) = users(session, pro, 1)
        (member_suspended,) = users(session, suspended, 1)
        frozen = create_user(session, tenant=free_b, password=None)
        frozen.status = UserStatus.frozen.value
        session.commit()
        staff = create_user(session, role=Role.operator, password=None)
        issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
        grant = plan_grant(session, amount=5)
        run(session_factory)
        granted = {a.account_id for a in awarded(session, grant)}
        assert granted == {admin_a.account_id, member_a.account_id, member_b.account_id}
        for outside in (member_pro, member_suspended, frozen, staff):
            assert balances(session, outside.account_id) == [0]
        # Issued by the platform: from issuance, one transaction with no tenant of its own.
        row = session.execute(
            text(
                "SELECT t.tenant_id, t.actor, e.amount FROM ledger_transactions t "
                "JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = :issuance "
                "WHERE t.idempotency_key LIKE 'grant:%'"
            ),
            {"issuance": issuance},
        ).one()
        assert (row.tenant_id, row.actor, row.amount) == (None, "system:grants", -15)

    def test_a_tenant_grant_with_a_label_reaches_only_its_labelled_users(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        tenant, other = create_tenant(session), create_tenant(session)
        vips = users(session, tenant, 2, labels=["vip", "beta"])
        plain = users(session, tenant, 2, labels=["beta"])
        other_vips = users(session, other, 1, labels=["vip"])
        grant = tenant_grant(session, tenant, Funding.platform, label="vip", amount=5)
        run(session_factory)
        assert {a.account_id for a in awarded(session, grant)} == {u.account_id for u in vips}
        assert balances(session, *(u.account_id for u in [*plain, *other_vips])) == [0, 0, 0]
        # Issued by the platform: the tenant's pool pays nothing.
        assert balances(session, tenant.pool_account_id) == [0]
        # A label given mid-period: the next run grants its user.
        user_service.update(session, context=None, user=plain[0], data=UserUpdate(labels=["VIP"]))
        session.commit()
        run(session_factory)
        assert balances(session, *(u.account_id for u in plain)) == [5, 0]

    def test_a_grant_not_in_force_grants_nothing(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        tenant = create_tenant(session)
        (member,) = users(session, tenant, 1)
        plan_grant(session, enabled=False)
        plan_grant(session, starts_at=datetime.now(UTC) + timedelta(hours=1))
        ended = plan_grant(session, starts_at=datetime.now(UTC) - timedelta(days=2))
        ended.ends_at = datetime.now(UTC) - timedelta(hours=1)
        session.commit()
        report = run(session_factory)
        assert report.granted_accounts == 0
        assert balances(session, member.account_id) == [0]


class TestFunding:
    def test_a_pool_funded_grant_hands_on_the_pools_tokens(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        tenant = create_tenant(session)
        vips = users(session, tenant, 3, labels=["vip"])
        users(session, tenant, 2)
        fund(session, account_id=tenant.pool_account_id, amount=100)
        issued_before = self._issued(session)
        grant = tenant_grant(session, tenant, label="vip", amount=10)
        run(session_factory)
        assert balances(session, tenant.pool_account_id, *(u.account_id for u in vips)) == [70, 10, 10, 10]
        assert self._issued(session) == issued_before  # no new tokens
        for award in awarded(session, grant):
            assert (award.source, award.priority, award.expires_at) == (
                LotSource.grant,
                10,
                Period.day.bounds(award.awarded_at)[1],
            )

    def test_a_pool_lot_expiring_sooner_gives_its_expiry_to_the_grant(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        """Expiry is not laundered by a grant: tokens the pool must spend within the hour stay so."""
        tenant = create_tenant(session)
        (member,) = users(session, tenant, 1)
        soon = datetime.now(UTC) + timedelta(hours=1)
        ledger.credit(
            session,
            account_id=tenant.pool_account_id,
            amount=10,
            source=LotSource.recharge,
            expires_at=soon,
            idempotency_key=f"test-{uuid.uuid4().hex}",
            request_hash=b"test",
            tenant_id=tenant.id,
            actor="test",
        )
        session.commit()
        grant = tenant_grant(session, tenant, amount=10)
        run(session_factory)
        (award,) = awarded(session, grant)
        assert award.expires_at == min(soon, Period.day.bounds(award.awarded_at)[1])
        assert balances(session, member.account_id) == [10]

    def test_a_pool_short_for_the_run_grants_no_one_records_the_shortfall_and_the_next_run_retries(
        self, session: Session, session_factory: sessionmaker[Session]
    ) -> None:
        tenant = create_tenant(session)
        members = users(session, tenant, 3)
        fund(session, account_id=tenant.pool_account_id, amount=25)
        grant = tenant_grant(session, tenant, amount=10)
        transactions_before = journal(session)[0]
        report = run(session_factory)
        assert (report.granted_accounts, report.short) == (0, [grant.id])
        assert journal(session)[0] == transactions_before
        assert balances(session, tenant.pool_account_id, *(u.account_id for u in members)) == [25, 0, 0, 0]
        short = period_row(session, grant)
        assert (short["granted_accounts"], short["shortfall_needed"], short["shortfall_available"]) == (0, 30, 25)
        assert short["shortfall_at"] is not None
        # Still short: the next run tries again and records it again.
        assert run(session_factory).short == [grant.id]
        fund(session, account_id=tenant.pool_account_id, amount=5)
        report = run(session_factory)
        assert (report.granted_accounts, report.short) == (3, [])
        assert balances(session, tenant.pool_account_id, *(u.account_id for u in members)) == [0, 10, 10, 10]
        paid = period_row(session, grant)
        assert (paid["granted_accounts"], paid["granted_tokens"], paid["shortfall_needed"], paid["shortfall_at"]) == (
            3,
            30,
            None,
            None,
        )

    @staticmethod
    def _issued(session: Session) -> int:
        issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
        return int(
            session.execute(
                text("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE account_id = :a"), {"a": issuance}
            ).scalar_one()
        )


class TestSpendingAndExpiry:
    def test_granted_tokens_burn_before_paid_ones_and_expire_at_the_period_end_through_the_lots_sweep(
        self, session: Session, session_factory: sessionmaker[Session], owner_engine: Engine
    ) -> None:
        tenant = create_tenant(session)
        (member,) = users(session, tenant, 1)
        fund(session, account_id=member.account_id, amount=20)  # paid: priority 50, no expiry
        grant = plan_grant(session, amount=5)
        run(session_factory)
        (award,) = awarded(session, grant)
        hold = ledger_holds.reserve(session, account_id=member.account_id, amount=3, reference="h1", ttl_seconds=60)
        ledger_holds.capture(session, hold_id=hold.hold_id, amount=3)
        session.commit()
        first = lots.account_lots(session, account_ids=[member.account_id])[member.account_id][0]
        assert (first.source, first.remaining, first.expires_at) == (LotSource.grant, 2, award.expires_at)
        # The period ends (the clock is not the test's to move: the lot's expiry is put behind it).
        with owner_engine.begin() as conn:
            conn.execute(
                text("UPDATE credit_lots SET expires_at = now() - interval '1 second' WHERE id = :id"),
                {"id": first.lot_id},
            )
        (expiry,) = lots.expire_due_lots(session)
        session.commit()
        assert (expiry.account_id, expiry.amount) == (member.account_id, 2)
        assert balances(session, member.account_id) == [20]
        # The period's grant was given: a run after its expiry does not give it again.
        assert run(session_factory).granted_accounts == 0
        assert balances(session, member.account_id) == [20]

    def test_the_reconciliation_is_clean_after_grants_and_notices_a_period_that_disagrees_with_its_awards(
        self, session: Session, session_factory: sessionmaker[Session], owner_engine: Engine
    ) -> None:
        tenant = create_tenant(session)
        users(session, tenant, 2, labels=["vip"])
        fund(session, account_id=tenant.pool_account_id, amount=50)
        plan_grant(session, amount=5)
        pooled = tenant_grant(session, tenant, amount=10, label="vip")
        run(session_factory)
        lots.expire_due_lots(session)
        session.commit()
        report = reconcile_all(session)
        assert report.balanced, report.discrepancies
        assert {
            "grant_award_entry_mismatch",
            "grant_transaction_unawarded",
            "grant_period_mismatch",
            "grant_lot_outlives_period",
        } <= set(report.checks_run)
        with owner_engine.begin() as conn:
            conn.execute(
                text("UPDATE credit_grant_periods SET granted_tokens = granted_tokens + 1 WHERE grant_id = :g"),
                {"g": pooled.id},
            )
        session.rollback()
        assert [d.check for d in reconcile_all(session).discrepancies] == ["grant_period_mismatch"]
        with owner_engine.begin() as conn:
            conn.execute(
                text("UPDATE credit_grant_periods SET granted_tokens = granted_tokens - 1 WHERE grant_id = :g"),
                {"g": pooled.id},
            )


@pytest.mark.parametrize("funding", [Funding.platform, Funding.tenant_pool])
def test_a_suspended_tenants_grant_waits_for_its_reactivation(
    session: Session, session_factory: sessionmaker[Session], funding: Funding
) -> None:
    tenant = create_tenant(session)
    (member,) = users(session, tenant, 1)
    fund(session, account_id=tenant.pool_account_id, amount=10)
    tenant_grant(session, tenant, funding, amount=5)
    tenant.status = TenantStatus.suspended.value
    session.commit()
    assert run(session_factory).granted_accounts == 0
    tenant.status = TenantStatus.active.value
    session.commit()
    assert run(session_factory).granted_accounts == 1
    assert balances(session, member.account_id) == [5]
