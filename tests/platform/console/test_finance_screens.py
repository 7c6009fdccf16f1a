"""The console's finance screens: the four logs with the API's filters (times in the viewer's zone) and keyset
pages, the streamed exports opened with the console's session, the daily report and the liability at an
instant, and a tenant admin kept to its own tenant."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import create_tenant, create_user, fund
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post, htmx_get, next_page_url, row_ids
from tests.platform.test_finance import make_job
from tests.platform.test_finance_exports import parse_csv, parse_jsonl


def log_row_ids(page: str) -> list[int]:
    return row_ids(page, "data-row-id")


def seed(session: Session) -> tuple[Tenant, Tenant, User, User]:
    mine, other = create_tenant(session, name="Fin Mine"), create_tenant(session, name="Fin Other")
    alice, bob = create_user(session, tenant=mine), create_user(session, tenant=other)
    fund(session, account_id=alice.account_id, amount=30)
    fund(session, account_id=alice.account_id, amount=12)
    fund(session, account_id=bob.account_id, amount=500)
    make_job(session, alice, outcome="succeeded", units=4)
    return mine, other, alice, bob


class TestLogs:
    def test_the_recharges_log_filters_by_tenant_and_pages_by_cursor(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        mine, _, alice, bob = seed(session)
        finance = console_user(Role.finance)
        everything = finance.client.get("/admin/finance/recharges")
        assert everything.status_code == 200
        assert len(log_row_ids(everything.text)) == 3
        narrowed = htmx_get(finance.client, f"/admin/finance/recharges?tenant_id={mine.id}&limit=1")
        assert narrowed.status_code == 200
        first = log_row_ids(narrowed.text)
        assert len(first) == 1
        older = next_page_url(narrowed.text)
        assert older, "a next page link"
        second = finance.client.get(older)
        assert log_row_ids(second.text)
        assert log_row_ids(second.text)[0] < first[0]
        assert f"tenant_id={mine.id}" in older, "the cursor link keeps the filters"
        # The export links carry the same filters.
        assert f"/admin/finance/recharges/export?format=csv&amp;tenant_id={mine.id}" in narrowed.text

    def test_times_typed_in_the_filters_are_the_viewers_zone(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        seed(session)
        finance = console_user(Role.finance)
        assert (
            console_post(
                finance.client, "/admin/account/timezone", finance.csrf, {"timezone": "Asia/Kolkata"}
            ).status_code
            == 303
        )
        local_now = datetime.now(ZoneInfo("Asia/Kolkata")).replace(tzinfo=None)
        # An hour ago in Kolkata includes everything; the same wall-clock time read as UTC (5.5 h later) would not.
        since = (local_now - timedelta(hours=1)).isoformat(timespec="seconds")
        assert len(log_row_ids(finance.client.get(f"/admin/finance/ledger?from={since}").text)) > 0
        later = (local_now + timedelta(minutes=5)).isoformat(timespec="seconds")
        assert log_row_ids(finance.client.get(f"/admin/finance/ledger?from={later}").text) == []
        assert "(Asia/Kolkata)" in finance.client.get("/admin/finance/usage").text

    def test_a_tenant_admin_sees_its_own_tenant_and_another_tenant_id_is_404(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        mine, other, alice, bob = seed(session)
        admin = console_user(Role.tenant_admin, tenant=mine)
        page = admin.client.get("/admin/finance/recharges")
        assert page.status_code == 200
        assert len(log_row_ids(page.text)) == 2  # alice's two recharges, not bob's
        refused = admin.client.get(f"/admin/finance/recharges?tenant_id={other.id}")
        assert refused.status_code == 404
        missing = admin.client.get(f"/admin/finance/usage?user_id={bob.id}")
        assert missing.status_code == 404
        assert 'data-code="filter_target_not_found"' in missing.text

    def test_a_bad_filter_is_a_422_page(self, session: Session, console_user: MakeConsoleUser) -> None:
        finance = console_user(Role.finance)
        response = finance.client.get("/admin/finance/ledger?kind=bogus")
        assert response.status_code == 422
        assert 'data-code="invalid_filter"' in response.text
        assert finance.client.get("/admin/finance/nothing").status_code == 404


class TestExports:
    def test_csv_and_jsonl_exports_stream_with_the_session_and_total_the_rows(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        mine, _, alice, _ = seed(session)
        finance = console_user(Role.finance)
        csv_response = finance.client.get(f"/admin/finance/recharges/export?format=csv&tenant_id={mine.id}")
        assert csv_response.status_code == 200, csv_response.text
        assert csv_response.headers["content-disposition"].endswith('.csv"')
        rows, trailer = parse_csv(csv_response.text)
        assert [int(r["amount"]) for r in rows] == [30, 12]
        assert trailer["rows"] == "2"
        assert trailer["amount"] == "42"
        jsonl = finance.client.get(f"/admin/finance/usage/export?format=jsonl&user_id={alice.id}")
        assert jsonl.status_code == 200
        documents, totals = parse_jsonl(jsonl.text)
        assert [d["captured"] for d in documents] == [4]
        assert totals["captured"] == 4

    def test_a_tenant_admins_export_holds_its_own_tenant_only(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        mine, other, _, _ = seed(session)
        admin = console_user(Role.tenant_admin, tenant=mine)
        rows, trailer = parse_csv(admin.client.get("/admin/finance/ledger/export?format=csv").text)
        assert {r["tenant_id"] for r in rows} == {str(mine.id)}
        assert admin.client.get(f"/admin/finance/ledger/export?tenant_id={other.id}").status_code == 404
        assert admin.client.get("/admin/finance/ledger/export?format=xml").status_code == 422

    def test_an_export_needs_a_session(self, session: Session, console_user: MakeConsoleUser) -> None:
        finance = console_user(Role.finance)
        finance.client.cookies.clear()
        response = finance.client.get("/admin/finance/ledger/export", follow_redirects=False)
        assert response.status_code == 303
        assert "/admin/sign-in" in response.headers["location"]


class TestReports:
    def test_the_daily_report_table_and_chart_are_the_apis_utc_days(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        mine, _, _, _ = seed(session)
        finance = console_user(Role.finance)
        page = finance.client.get(f"/admin/finance/reports/daily?tenant_id={mine.id}")
        assert page.status_code == 200, page.text
        today = datetime.now(UTC).date().isoformat()
        row = re.search(rf'<tr data-day="{today}">(.*?)</tr>', page.text, re.S)
        assert row
        numbers = [int(n.replace(",", "")) for n in re.findall(r'<span class="num">([\d,]+)</span>', row.group(1))]
        assert numbers == [
            0,
            42,
            4,
            0,
            0,
            0,
            38,
        ]  # opening, recharged, consumed, adjustments, expired, released, closing
        data = json.loads(re.search(r'id="daily-data">(.*?)</script>', page.text, re.S).group(1))  # type: ignore[union-attr]
        assert data["zone"] == "UTC"
        assert data["series"][0]["values"][-1] == 42
        assert "Days in UTC" in page.text
        assert "uPlot.iife.min.js" in page.text
        assert "charts.js" in page.text

    def test_liability_now_and_at_an_instant_in_the_viewers_zone(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        mine, _, _, _ = seed(session)
        finance = console_user(Role.finance)
        now = finance.client.get(f"/admin/finance/liability?tenant_id={mine.id}")
        assert now.status_code == 200
        assert 'data-total="38"' in now.text
        console_post(finance.client, "/admin/account/timezone", finance.csrf, {"timezone": "America/New_York"})
        an_hour_ago = datetime.now(ZoneInfo("America/New_York")) - timedelta(hours=1)
        before = finance.client.get(
            f"/admin/finance/liability?tenant_id={mine.id}&at={an_hour_ago.replace(tzinfo=None).isoformat(timespec='seconds')}"
        )
        assert before.status_code == 200
        assert 'data-total="0"' in before.text

    def test_pages_without_charts_load_no_chart_code(self, session: Session, console_user: MakeConsoleUser) -> None:
        finance = console_user(Role.finance)
        assert "charts.js" not in finance.client.get("/admin/finance/ledger").text
