"""Browser flows of the dashboard and the finance screens on a real `facemint serve`: the charts drawn from real
data (points on the canvas, not just an element), the reconciliation run from its button, an export downloaded
and its totals checked against what was seeded, and finance's forged posts refused."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.users.orm import Role
from tests.factories import create_tenant, create_user, fund
from tests.platform.console.browser.browser_helpers import sign_in
from tests.platform.test_finance import make_job

# Pixels of a series' colour on a chart's canvas (charts.js: the first series is #2457d6, the second #b42318).
SERIES_PIXELS = """([id, rgb]) => {
  const canvas = document.querySelector(`#${id} canvas`);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - rgb[0]) < 12 && Math.abs(data[i + 1] - rgb[1]) < 12 && Math.abs(data[i + 2] - rgb[2]) < 12
        && data[i + 3] > 200) n++;
  }
  return n;
}"""
PLOTTED = """(id) => {
  const plot = document.getElementById(id).uplot;
  return {x: plot.data[0].length, sums: plot.data.slice(1).map(s => s.reduce((a, b) => a + (b || 0), 0)),
          labels: plot.series.slice(1).map(s => s.label)};
}"""
BLUE, RED = (0x24, 0x57, 0xD6), (0xB4, 0x23, 0x18)


def seed(session: Session) -> Any:
    tenant = create_tenant(session, name="Browser Books")
    alice = create_user(session, tenant=tenant)
    fund(session, account_id=alice.account_id, amount=60)
    fund(session, account_id=alice.account_id, amount=15)
    make_job(session, alice, outcome="succeeded", units=5)
    make_job(session, alice, outcome="failed", units=1)
    return tenant, alice


def test_the_dashboard_draws_its_charts_from_the_ledger(page: Page, session: Session) -> None:
    seed(session)
    operator = create_user(session, role=Role.operator)
    sign_in(page, operator.email)

    expect(page.locator("#chart-days[data-drawn='30'] canvas")).to_be_visible()
    expect(page.locator("#chart-hours[data-drawn='48'] canvas")).to_be_visible()
    days = page.evaluate(PLOTTED, "chart-days")
    assert days == {"x": 30, "sums": [75, 5], "labels": ["Recharged", "Consumed"]}
    hours = page.evaluate(PLOTTED, "chart-hours")
    assert hours["x"] == 48
    assert dict(zip(hours["labels"], hours["sums"], strict=True)) == {
        "queued": 0, "running": 0, "succeeded": 1, "failed": 1, "canceled": 0,
    }  # fmt: skip
    # Drawn, not just placed: both series' colours are on the days chart's canvas.
    assert page.evaluate(SERIES_PIXELS, ["chart-days", list(BLUE)]) > 20
    assert page.evaluate(SERIES_PIXELS, ["chart-days", list(RED)]) > 20
    expect(page.locator(".chart-caption").first).to_contain_text("days in UTC")
    expect(page.locator("#top-tenants")).to_contain_text("Browser Books")

    # Run the reconciliation from its button: the panel is swapped in place with the recorded run.
    page.get_by_role("button", name="Run reconciliation now").click()
    expect(page.locator("#reconciliation")).to_contain_text("just now")
    expect(page.locator("#reconciliation")).to_contain_text("The books balanced")
    assert session.execute(text("SELECT count(*) FROM reconciliation_runs")).scalar_one() == 1


def test_the_chart_days_follow_the_viewers_zone(page: Page, session: Session) -> None:
    finance = create_user(session, role=Role.finance)
    sign_in(page, finance.email, path="/admin/account")
    page.get_by_label("Time zone").fill("Asia/Kolkata")
    page.get_by_role("button", name="Use this zone").click()
    page.goto("/admin/")
    expect(page.locator("#chart-days[data-drawn='30'] canvas")).to_be_visible()
    expect(page.locator(".chart-caption").first).to_contain_text("days in Asia/Kolkata")
    # Every day starts at midnight in Kolkata: 18:30 UTC the day before.
    minutes = page.evaluate("() => document.getElementById('chart-days').uplot.data[0].map(t => (t % 86400) / 60)")
    assert set(minutes) == {18 * 60 + 30}


def test_an_export_downloads_and_its_totals_match_the_seeded_recharges(page: Page, session: Session) -> None:
    tenant, alice = seed(session)
    finance = create_user(session, role=Role.finance)
    sign_in(page, finance.email, path="/admin/finance/recharges")
    page.get_by_label("Tenant ID").fill(str(tenant.id))
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#list tbody tr")).to_have_count(2)
    with page.expect_download() as download_info:
        page.locator("#exports a[data-export='csv']").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".csv")
    body = Path(download.path()).read_text(encoding="utf-8")
    lines = body.splitlines()
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[:-1]) + "\n")))
    totals = dict(cell.split("=", 1) for cell in next(csv.reader([lines[-1]]))[1:])
    assert sorted(int(r["amount"]) for r in rows) == [15, 60]
    assert {r["user_id"] for r in rows} == {str(alice.id)}
    assert totals["rows"] == "2"
    assert totals["amount"] == "75"


def test_finances_forged_posts_are_refused(page: Page, session: Session) -> None:
    finance = create_user(session, role=Role.finance)
    sign_in(page, finance.email, path="/admin/prices")
    expect(page.get_by_role("button", name="Preview the change")).to_have_count(0)
    statuses = page.evaluate(
        """async () => {
          const token = document.body.dataset.csrf;
          const post = (path, body) => fetch(path, {method: "POST", headers: {"X-CSRF-Token": token},
                                                    body: new URLSearchParams(body)})
            .then(async r => [r.status, (await r.text()).match(/data-code="([^"]+)"/)[1]]);
          return [await post("/admin/prices", {operation: "swap.image", tokens_per_unit: "9", expected_version: "1"}),
                  await post("/admin/ledger/seal", {})];
        }"""
    )
    # Refused for the scope (the CSRF token was right): the server's check, not a missing button.
    assert statuses == [[403, "insufficient_scope"], [403, "insufficient_scope"]]
    assert session.execute(text("SELECT count(*) FROM prices WHERE operation = 'swap.image'")).scalar_one() == 1
    assert session.execute(text("SELECT count(*) FROM ledger_seals")).scalar_one() == 0
