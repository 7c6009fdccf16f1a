"""The console's dashboard (GET /admin/): figures from real data, charts' series in the viewer's zone, the
reconciliation and seal buttons, and what each role sees and may do."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post
from tests.platform.test_finance import make_job


def chart(page: str, element_id: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', page, re.S)
    assert match, f"the page embeds {element_id}"
    return json.loads(match.group(1))


def set_zone(client, csrf: str, zone: str) -> None:  # type: ignore[no-untyped-def]
    assert console_post(client, "/admin/account/timezone", csrf, {"timezone": zone}).status_code == 303


class TestFigures:
    def test_staff_dashboard_shows_the_days_jobs_and_live_figures_from_the_ledger(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        tenant = create_tenant(session, name="Dash Co")
        alice = create_user(session, tenant=tenant)
        fund(session, account_id=alice.account_id, amount=40)
        make_job(session, alice, outcome="succeeded", units=3)
        make_job(session, alice, outcome="queued", units=2)
        operator = console_user(Role.operator)

        page = operator.client.get("/admin/")
        assert page.status_code == 200, page.text
        days = chart(page.text, "days-data")
        assert days["zone"] == "UTC"
        assert len(days["x"]) == 30
        recharged, consumed = (s["values"] for s in days["series"])
        assert recharged[-1] == 40
        assert sum(recharged) == 40
        assert consumed[-1] == 3
        assert sum(consumed) == 3
        hours = chart(page.text, "hours-data")
        assert len(hours["x"]) == 48
        by_status = {s["label"]: sum(s["values"]) for s in hours["series"]}
        assert by_status["succeeded"] == 1
        assert by_status["queued"] == 1
        assert re.search(r'data-stat="tokens-held"><div class="value"><span class="num">2</span>', page.text)
        assert f'data-tenant-id="{tenant.id}"' in page.text
        assert "Dash Co" in page.text
        assert "days in UTC" in page.text
        assert 'id="reconciliation"' in page.text
        assert 'id="seals"' in page.text

    def test_the_days_are_the_viewers_zone(self, session: Session, console_user: MakeConsoleUser) -> None:
        finance = console_user(Role.finance)
        set_zone(finance.client, finance.csrf, "Pacific/Auckland")
        page = finance.client.get("/admin/").text
        days = chart(page, "days-data")
        assert days["zone"] == "Pacific/Auckland"
        zone = ZoneInfo("Pacific/Auckland")
        starts = [datetime.fromtimestamp(x, UTC).astimezone(zone) for x in days["x"]]
        assert all((s.hour, s.minute) == (0, 0) for s in starts), "each day starts at local midnight"
        assert starts[-1].date() == datetime.now(zone).date()
        assert "days in Pacific/Auckland" in page

    def test_a_tenant_admin_sees_its_own_tenant_only(self, session: Session, console_user: MakeConsoleUser) -> None:
        mine, other = create_tenant(session), create_tenant(session, name="Other Corp")
        alice, bob = create_user(session, tenant=mine), create_user(session, tenant=other)
        fund(session, account_id=alice.account_id, amount=10)
        fund(session, account_id=bob.account_id, amount=900)
        make_job(session, bob, outcome="queued", units=5)
        admin = console_user(Role.tenant_admin, tenant=mine)

        page = admin.client.get("/admin/")
        assert page.status_code == 200
        recharged = chart(page.text, "days-data")["series"][0]["values"]
        assert sum(recharged) == 10
        assert re.search(r'data-stat="tokens-held"><div class="value"><span class="num">0</span>', page.text)
        assert "Other Corp" not in page.text
        assert 'id="reconciliation"' not in page.text
        assert 'data-stat="queue-length"' not in page.text


class TestButtons:
    def test_run_reconciliation_records_a_run_and_swaps_the_panel(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        operator = console_user(Role.operator)
        response = operator.client.post(
            "/admin/reconciliation/run", headers={"HX-Request": "true", "X-CSRF-Token": operator.csrf}
        )
        assert response.status_code == 200, response.text
        assert 'id="reconciliation"' in response.text
        assert "The books balanced" in response.text
        run = session.execute(text("SELECT balanced, requested_by FROM reconciliation_runs")).one()
        assert run.balanced
        assert run.requested_by == f"user:{operator.user.id}"
        assert "The books balanced" in operator.client.get("/admin/").text

    def test_finance_sees_no_run_button_and_cannot_run_one(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        finance = console_user(Role.finance)
        assert "Run reconciliation now" not in finance.client.get("/admin/").text
        response = console_post(finance.client, "/admin/reconciliation/run", finance.csrf)
        assert response.status_code == 403
        assert session.execute(text("SELECT count(*) FROM reconciliation_runs")).scalar_one() == 0

    def test_a_tenant_admin_cannot_run_reconciliation(self, session: Session, console_user: MakeConsoleUser) -> None:
        admin = console_user(Role.tenant_admin, tenant=create_tenant(session))
        response = console_post(admin.client, "/admin/reconciliation/run", admin.csrf)
        assert response.status_code == 403
        assert session.execute(text("SELECT count(*) FROM reconciliation_runs")).scalar_one() == 0

    def test_seal_now_seals_the_finished_rows(self, session: Session, console_user: MakeConsoleUser) -> None:
        user = create_user(session, tenant=create_tenant(session))
        fund(session, account_id=user.account_id, amount=5)
        operator = console_user(Role.operator)
        response = operator.client.post(
            "/admin/ledger/seal", headers={"HX-Request": "true", "X-CSRF-Token": operator.csrf}
        )
        assert response.status_code == 200, response.text
        sealed = session.execute(text("SELECT coalesce(sum(n_rows), 0) FROM ledger_seals")).scalar_one()
        assert sealed > 0
        assert f'data-sealed-rows="{sealed}"' in response.text
        assert 'data-stream="ledger_entries"' in response.text

    def test_finance_sees_no_seal_button_and_a_forged_seal_is_refused(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        finance = console_user(Role.finance)
        assert "Seal now" not in finance.client.get("/admin/").text
        response = console_post(finance.client, "/admin/ledger/seal", finance.csrf)
        assert response.status_code == 403
        assert 'data-code="insufficient_scope"' in response.text
        assert session.execute(text("SELECT count(*) FROM ledger_seals")).scalar_one() == 0

    def test_a_post_without_the_csrf_token_is_refused(self, session: Session, console_user: MakeConsoleUser) -> None:
        operator = console_user(Role.operator)
        response = operator.client.post("/admin/reconciliation/run", follow_redirects=False)
        assert response.status_code == 403
        assert session.execute(text("SELECT count(*) FROM reconciliation_runs")).scalar_one() == 0
