"""The dashboard's chart and top tenants and the finance daily report read the journal's rollup plus the unsealed
tail: number for number what the old queries over every entry return, for every day, tenant and zone (half-hour
and 45-minute offsets, DST changes), whether nothing, part or all of the journal is sealed."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.ledger import holds as ledger_holds
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from billing.reports.reconcile import reconcile
from billing.reports.rollup import UNSEALED
from billing.sealing import service as sealing
from facemint.finance import reports as finance_reports
from facemint.reports import dashboard
from facemint.users.orm import Role
from tests.billing import rollup_reference as reference
from tests.factories import create_tenant, create_user

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # the dashboard's 30 days span New York's DST end (1 November)
ZONES = [
    ZoneInfo(name)
    for name in (
        "UTC",
        "Asia/Kolkata",  # +05:30
        "Asia/Kathmandu",  # +05:45
        "America/New_York",  # DST
        "America/St_Johns",  # -03:30 with DST
        "Australia/Lord_Howe",  # +10:30, a half-hour DST
        "Pacific/Chatham",  # +12:45 / +13:45
    )
]
# Instants each day where some zone's day begins or ends, and just before them (in UTC).
_MARKS = (
    time(0, 0),
    time(23, 59, 59, 999999),
    time(18, 29, 59, 999999),
    time(18, 30),  # Kolkata's midnight
    time(18, 15),  # Kathmandu's
    time(3, 59, 59, 999999),
    time(4, 0),  # New York's in summer time
    time(5, 0),  # and in winter
    time(13, 30),  # Lord Howe's
    time(11, 15),  # Chatham's in winter (+12:45)
    time(9, 41, 7),
)


def _instants(first: date, days: int) -> list[datetime]:
    return [
        datetime.combine(first + timedelta(days=d), mark, tzinfo=UTC)
        for d in range(0, days, 2)
        for mark in _MARKS[d % 3 :: 2]
    ]


def _key() -> str:
    return f"rollup-test-{uuid.uuid4().hex}"


class Ledger:
    """Tenants with users and pools, a staff account without a tenant, and every kind of transaction; each
    transaction then moved (by the owner: the service cannot) to an instant of its own."""

    def __init__(self, session: Session, owner: Engine) -> None:
        self.session, self.owner = session, owner
        self.tenants = [create_tenant(session, name=f"rollup-{i}-{uuid.uuid4().hex[:6]}") for i in range(3)]
        self.users = [create_user(session, tenant=t).account_id for t in self.tenants for _ in range(2)]
        self.staff = create_user(session, role=Role.platform_admin).account_id
        self.pools = [t.pool_account_id for t in self.tenants]
        self.issuance = ledger.system_account_id(session, kind=AccountKind.issuance)
        self.adjustments = ledger.system_account_id(session, kind=AccountKind.adjustments)
        self.small_recharges: list[int] = []
        self.counter = itertools.count(1)
        # Enough on every account for the small movements that follow.
        for account in [*self.users, *self.pools, self.staff]:
            self._recharge(self.issuance, account, 1_000_000)

    def _recharge(self, source: int, account: int, amount: int) -> int:
        posting = ledger.transfer(
            self.session,
            kind=TransactionKind.recharge,
            from_account_id=source,
            to_account_id=account,
            amount=amount,
            idempotency_key=_key(),
            request_hash=b"t",
            tenant_id=None,
            actor="test",
        )
        self.session.commit()
        return posting.transaction_id

    def one_of_each(self) -> None:
        """A recharge, a pool handing tokens to a user, captures (partial and whole), a released hold, an
        adjustment each way and a reversal."""
        n = next(self.counter)
        user, other = self.users[n % len(self.users)], self.users[(n + 3) % len(self.users)]
        pool, pool_user = self.pools[n % 3], self.users[2 * (n % 3)]
        self.small_recharges.append(self._recharge(self.issuance, user, 10 + n))
        self._recharge(pool, pool_user, 7 + n)
        self._recharge(self.issuance, self.staff, 3 + n)
        for account, amount, captured in ((user, 60, 20 + n), (other, 30, None), (self.staff, 9, 4)):
            hold = ledger_holds.reserve(
                self.session, account_id=account, amount=amount, reference=_key(), ttl_seconds=60
            )
            ledger_holds.capture(self.session, hold_id=hold.hold_id, amount=captured)
            self.session.commit()
        hold = ledger_holds.reserve(self.session, account_id=other, amount=11, reference=_key(), ttl_seconds=60)
        ledger_holds.release(self.session, hold_id=hold.hold_id)
        self.session.commit()
        for legs in (((self.adjustments, -(5 + n)), (user, 5 + n)), ((other, -2), (self.adjustments, 2))):
            ledger.post(
                self.session,
                kind=TransactionKind.adjustment,
                legs=list(legs),
                idempotency_key=_key(),
                request_hash=b"t",
                tenant_id=None,
                actor="test",
                reason="test",
            )
            self.session.commit()
        ledger.reverse(
            self.session,
            transaction_id=self.small_recharges.pop(0),
            idempotency_key=_key(),
            request_hash=b"t",
            actor="test",
            reason="test",
        )
        self.session.commit()

    def spread(self, after_id: int, instants: list[datetime]) -> None:
        """Move the transactions after `after_id` (and their entries and holds) to `instants`, in turn."""
        with self.owner.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            ids = conn.execute(
                text("SELECT id FROM ledger_transactions WHERE id > :after ORDER BY id"), {"after": after_id}
            ).scalars()
            for transaction_id, at in zip(ids, itertools.cycle(instants), strict=False):
                params = {"id": transaction_id, "at": at}
                conn.execute(text("UPDATE ledger_transactions SET created_at = :at WHERE id = :id"), params)
                conn.execute(text("UPDATE ledger_entries SET created_at = :at WHERE transaction_id = :id"), params)
                conn.execute(
                    text(
                        "UPDATE holds h SET created_at = :at - interval '1 minute', resolved_at = :at "
                        "FROM ledger_transactions t WHERE t.id = :id AND h.id = t.hold_id"
                    ),
                    params,
                )
            # Released holds have no transaction: each takes the instant of the capture made just before it.
            conn.execute(
                text(
                    """
                    UPDATE holds h SET created_at = p.created_at, resolved_at = p.resolved_at + interval '7 hours'
                    FROM holds p WHERE h.status = 'released' AND p.id = h.id - 1
                    """
                )
            )

    def last_transaction(self) -> int:
        return int(self.session.execute(text("SELECT coalesce(max(id), 0) FROM ledger_transactions")).scalar_one())

    def seal(self, *, max_rows: int = 50_000, max_batches: int = 1_000) -> int:
        results = sealing.seal_all(
            self.session, max_rows=max_rows, max_batches=max_batches, streams=("ledger_entries",)
        )
        self.session.commit()
        return sum(r.n_rows for r in results)

    def unsealed(self) -> int:
        return int(self.session.execute(text(f"SELECT count(*) FROM ledger_entries e WHERE {UNSEALED}")).scalar_one())


def _assert_reports_match(session: Session, tenant_ids: list[int]) -> None:
    for tz in ZONES:
        for scope in (None, *tenant_ids[:2]):
            days, top = reference.dashboard_days_and_top(session, tenant_scope=scope, tz=tz, now=NOW)
            charts = dashboard._charts(session, tenant_scope=scope, tz=tz, now=NOW)
            assert charts.days == days, (tz.key, scope)
            assert charts.top_tenants == top, (tz.key, scope)
    windows = [
        (date(2026, 10, 22), date(2026, 11, 20)),
        (date(2026, 11, 1), date(2026, 11, 1)),
        (date(2026, 9, 1), date(2026, 12, 1)),
        (date(2027, 1, 1), date(2027, 1, 3)),
    ]
    for (first, last), (tenant_scope, tenant_id) in itertools.product(
        windows, [(None, None), (tenant_ids[0], None), (None, tenant_ids[1]), (tenant_ids[0], tenant_ids[0])]
    ):
        expected = reference.finance_daily(
            session, first=first, last=last, tenant_scope=tenant_scope, tenant_id=tenant_id
        )
        got = finance_reports.daily_report(
            session, first=first, last=last, tenant_scope=tenant_scope, tenant_id=tenant_id
        )
        assert got == expected, (first, last, tenant_scope, tenant_id)
    session.rollback()


def test_reports_equal_the_journal_sealed_or_not(session: Session, owner_engine: Engine) -> None:
    books = Ledger(session, owner_engine)
    funded = 0
    books.spread(funded, [datetime(2026, 9, 20, 7, 45, tzinfo=UTC)])
    marked = books.last_transaction()
    for _ in range(18):
        books.one_of_each()
    books.spread(marked, _instants(date(2026, 10, 1), 52))
    tenant_ids = [t.id for t in books.tenants]
    expected_days = reference.dashboard_days_and_top(session, tenant_scope=None, tz=ZONES[1], now=NOW)[0]
    assert sum(d.recharged for d in expected_days) > 0
    assert sum(d.consumed for d in expected_days) > 0
    session.rollback()

    # Nothing sealed: the tail is the whole journal.
    assert books.unsealed() > 200
    _assert_reports_match(session, tenant_ids)
    # Part of it sealed (a prefix in (xid, id) order, cutting through a transaction), then all of it.
    assert books.seal(max_rows=77, max_batches=2) == 154
    _assert_reports_match(session, tenant_ids)
    books.seal()
    assert books.unsealed() == 0
    _assert_reports_match(session, tenant_ids)
    # New entries after the seal head, in the same days.
    marked = books.last_transaction()
    for _ in range(4):
        books.one_of_each()
    books.spread(marked, _instants(date(2026, 10, 30), 20))
    assert books.unsealed() > 0
    _assert_reports_match(session, tenant_ids)
    books.seal()
    _assert_reports_match(session, tenant_ids)
    assert "rollup_mismatch" in reconcile(session).checks_run
    assert reconcile(session).balanced


@pytest.mark.parametrize("year", [2026, 2027])
def test_every_zones_days_start_on_a_quarter_hour(year: int) -> None:
    """The rollup's premise: a local day in any zone is a run of whole 15-minute UTC buckets."""
    off_grid = [
        (name, day)
        for name in sorted(available_timezones())
        for day in (date(year, 1, 1) + timedelta(days=i) for i in range(365))
        if int(datetime.combine(day, time(), tzinfo=ZoneInfo(name)).timestamp()) % 900
    ]
    assert off_grid == []
