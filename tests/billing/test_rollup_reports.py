"""The dashboard's chart and top tenants and the finance daily report read the journal's rollup plus the unsealed
tail: number for number what the old queries over every entry return, for every day, tenant and zone (half-hour
and 45-minute offsets, DST changes), whether nothing, part or all of the journal is sealed."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from billing.reports.reconcile import reconcile
from facemint.finance import reports as finance_reports
from facemint.reports import dashboard
from tests.billing import rollup_reference as reference

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
    books = reference.Ledger(session, owner_engine)
    funded = 0
    books.spread(funded, [datetime(2026, 9, 20, 7, 45, tzinfo=UTC)])
    marked = books.last_transaction()
    for _ in range(18):
        books.one_of_each()
    books.spread(marked, reference.instants(date(2026, 10, 1), 52))
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
    books.spread(marked, reference.instants(date(2026, 10, 30), 20))
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
