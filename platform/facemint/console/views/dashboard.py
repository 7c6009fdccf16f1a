"""The dashboard (GET /admin/): tokens recharged and consumed per day and jobs per hour by status (charts, in
the viewer's zone), the top tenants by consumption, tokens held now, jobs queued and running, the Redis queue, the
webhook backlog, and for platform staff the last reconciliation and the sealed books, each with a button to run
it now. The figures are GET /admin/v1/reports/dashboard's (`facemint.reports.dashboard`); the buttons are POST
/admin/v1/reconciliation/runs and POST /admin/v1/ledger/seals, with the same checks. A tenant admin sees its own
tenant's figures, without the platform-wide panels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from facemint.auth.scopes import Scope
from facemint.console.web import CheckedForm, ViewerDep, is_htmx, redirect, render
from facemint.deps import RedisDep, SessionDep, SettingsDep
from facemint.reports import dashboard as dashboard_flow
from facemint.reports import service as reports
from facemint.reports.endpoints import ensure_platform_staff
from facemint.reports.schemas import ReconciliationRunRead

router = APIRouter()


def script_json(value: Any) -> str:
    """JSON for a <script type="application/json"> element: `<`, `>` and `&` escaped, so no value (a tenant's name)
    can close the element."""
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def chart_data(zone: str, starts: Sequence[datetime], series: dict[str, list[int]]) -> str:
    """What charts.js draws: bucket starts (epoch seconds) and one list of values per labelled series."""
    return script_json(
        {
            "zone": zone,
            "x": [int(start.timestamp()) for start in starts],
            "series": [{"label": label, "values": values} for label, values in series.items()],
        }
    )


@router.get("/")
def dashboard_page(
    request: Request,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    fresh: bool = False,
) -> Response:
    viewer.require(Scope.reports_read)
    figures = dashboard_flow.dashboard(
        session,
        redis,
        tenant_scope=viewer.principal.tenant_scope,
        tz=viewer.tz,
        queue_name=settings.queue_name,
        fresh=fresh,
    )
    charts = figures.charts
    days_chart = chart_data(
        charts.zone,
        [d.start for d in charts.days],
        {"Recharged": [d.recharged for d in charts.days], "Consumed": [d.consumed for d in charts.days]},
    )
    hours_chart = chart_data(
        charts.zone,
        [h.start for h in charts.hours],
        {status: [h.counts.get(status, 0) for h in charts.hours] for status in charts.statuses},
    )
    return render(
        request,
        viewer,
        "dashboard/index.html",
        figures=figures,
        days_chart=days_chart,
        hours_chart=hours_chart,
        totals={
            "recharged": sum(d.recharged for d in charts.days),
            "consumed": sum(d.consumed for d in charts.days),
            "jobs": sum(sum(h.counts.values()) for h in charts.hours),
        },
        seal=None,
    )


@router.post("/reconciliation/run")
def run_reconciliation(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm) -> Response:
    """Reconcile now and record the run (POST /admin/v1/reconciliation/runs): operators and platform admins."""
    viewer.require(Scope.reconciliation_run)
    ensure_platform_staff(viewer.principal)
    run = reports.run_and_record(session, engine=request.app.state.engine, requested_by=viewer.principal.label)
    if not is_htmx(request):
        return redirect(request, "/")
    last = ReconciliationRunRead.model_validate(run, from_attributes=True)
    return render(request, viewer, "dashboard/_reconciliation.html", last=last, just_ran=True)


@router.post("/ledger/seal")
def seal_books(
    request: Request, session: SessionDep, settings: SettingsDep, viewer: ViewerDep, form: CheckedForm
) -> Response:
    """Seal what is finished now (POST /admin/v1/ledger/seals): operators and platform admins (`ledger:adjust`)."""
    viewer.require(Scope.ledger_adjust)
    ensure_platform_staff(viewer.principal)
    outcome = reports.seal_now(session, max_rows=settings.seal_batch_max_rows)
    if not is_htmx(request):
        return redirect(request, "/")
    streams = [dashboard_flow.stream_seal(d) for d in reports.books_status(session)]
    seal = {"rows": sum(r.n_rows for r in outcome.results), "caught_up": outcome.caught_up}
    return render(request, viewer, "dashboard/_seals.html", streams=streams, seal=seal)
