"""The finance screens: the recharge, usage, ledger and audit logs with the API's filters and keyset pages, their
streamed CSV and JSONL exports (the API's exports, opened with the console's session instead of a bearer token,
with the same concurrency caps and time limit), the daily report as a table and a chart, and the liability at an
instant. Everything is GET /admin/v1/finance's: the same filters (`log_filters`), services and `reports:read`
scope; a tenant admin sees its own tenant only. Times typed in filters are in the viewer's zone; the daily report
is per UTC day, as the API defines it, and its chart says so."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from facemint.auth.scopes import Scope
from facemint.console.forms import positive_id
from facemint.console.views.dashboard import chart_data
from facemint.console.web import CONSOLE_PATH, Viewer, ViewerDep, next_page_url, parse_local, render, url_for_page
from facemint.deps import SessionDep, SettingsDep, page_params
from facemint.errors import NotFound
from facemint.finance import logs, reports, service
from facemint.finance.endpoints import LogQuery, export_response, log_filters
from facemint.finance.errors import InvalidFilter
from facemint.pagination import PageParams, make_page

router = APIRouter()
FILTER_NAMES = ("tenant_id", "user_id", "from", "to", "kind", "batch_id", "operator", "job_id")
# What each log's table shows (every column is in the export).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "recharges": ("entry_id", "created_at", "tenant_id", "user_id", "account_kind", "amount", "balance_after",
                  "batch_id", "actor", "reason", "approval_id"),
    "usage": ("id", "created_at", "job_id", "tenant_id", "user_id", "job_status", "hold_status", "held", "captured",
              "released", "price_version"),
    "ledger": ("entry_id", "created_at", "transaction_id", "kind", "tenant_id", "user_id", "account_kind", "amount",
               "balance_after", "actor", "reason"),
    "audit": ("id", "occurred_at", "tenant_id", "actor_user_id", "actor_api_key_id", "action", "target_type",
              "target_id"),
}  # fmt: skip
ID_COLUMN = {"recharges": "entry_id", "usage": "id", "ledger": "entry_id", "audit": "id"}


def _log(name: str) -> logs.LogSpec:
    spec = logs.LOGS.get(name)
    if spec is None:
        raise NotFound(f"no finance log named {name[:40]!r}")
    return spec


def filter_values(request: Request) -> dict[str, str]:
    """The filter fields as typed (for the form and the links), trimmed and bounded."""
    return {name: request.query_params.get(name, "").strip()[:100] for name in FILTER_NAMES}


def log_query(params: dict[str, str], viewer: Viewer) -> LogQuery:
    """The form's fields as the API's LogQuery; `from` and `to` are typed in the viewer's zone."""
    return LogQuery(
        tenant_id=positive_id(params.get("tenant_id", ""), "tenant_id", error=InvalidFilter),
        user_id=positive_id(params.get("user_id", ""), "user_id", error=InvalidFilter),
        start=parse_local(params["from"], viewer.tz),
        end=parse_local(params["to"], viewer.tz),
        kind=params["kind"] or None,
        batch_id=positive_id(params.get("batch_id", ""), "batch_id", error=InvalidFilter),
        operator=params["operator"] or None,
        job_id=params["job_id"] or None,
    )


@router.get("/finance")
def finance_home(request: Request, viewer: ViewerDep) -> Response:
    viewer.require(Scope.reports_read)
    return RedirectResponse(url_for_page(request, f"{CONSOLE_PATH}/finance/recharges"), status_code=303)


@router.get("/finance/reports/daily")
def daily_report_page(
    request: Request, session: SessionDep, viewer: ViewerDep, tenant_id: str = "", first: str = "", last: str = ""
) -> Response:
    """GET /admin/v1/finance/reports/daily as a table (totals per day, and per tenant when one is chosen or the
    viewer is a tenant admin) and a chart."""
    viewer.require(Scope.reports_read)
    chosen = positive_id(tenant_id, "tenant_id", error=InvalidFilter)
    if chosen is not None:
        viewer.principal.ensure_tenant_visible(chosen, what="tenant")
    first_day, last_day = reports.default_days(_day(first, "first"), _day(last, "last"))
    rows = reports.daily_report(
        session, first=first_day, last=last_day, tenant_scope=viewer.principal.tenant_scope, tenant_id=chosen
    )
    totals: dict[date, dict[str, int]] = {}
    for row in rows:
        day = totals.setdefault(row.day, dict.fromkeys(("opening", "recharged", "consumed", "released",
                                                             "adjustments", "expired", "closing"), 0))  # fmt: skip
        for field in day:
            day[field] += getattr(row, field)
    days = sorted(totals)
    starts = [datetime.combine(day, time(), tzinfo=UTC) for day in days]
    chart = chart_data(
        "UTC",
        starts,
        {
            "Recharged": [totals[d]["recharged"] for d in days],
            "Consumed": [totals[d]["consumed"] for d in days],
            "Adjustments": [totals[d]["adjustments"] for d in days],
        },
    )
    per_tenant = rows if chosen is not None or viewer.principal.tenant_scope is not None else []
    return render(
        request,
        viewer,
        "finance/daily.html",
        first=first_day,
        last=last_day,
        tenant_id=tenant_id.strip(),
        days=[(d, totals[d]) for d in days],
        per_tenant=per_tenant,
        chart=chart,
    )


def _day(value: str, name: str) -> date | None:
    """A `date` input (YYYY-MM-DD), or None when empty."""
    if not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        raise InvalidFilter(f"`{name}` must be a day, YYYY-MM-DD", filter=name) from None


@router.get("/finance/liability")
def liability_page(
    request: Request, session: SessionDep, viewer: ViewerDep, at: str = "", tenant_id: str = ""
) -> Response:
    """GET /admin/v1/finance/reports/liability: now, or at an instant typed in the viewer's zone."""
    viewer.require(Scope.reports_read)
    chosen = positive_id(tenant_id, "tenant_id", error=InvalidFilter)
    if chosen is not None:
        viewer.principal.ensure_tenant_visible(chosen, what="tenant")
    instant = parse_local(at.strip()[:40], viewer.tz)
    report = reports.liability_report(session, at=instant, tenant_scope=viewer.principal.tenant_scope, tenant_id=chosen)
    return render(
        request, viewer, "finance/liability.html", report=report, at=at.strip()[:40], tenant_id=tenant_id.strip()
    )


@router.get("/finance/{log_name}/export")
def export_log(
    request: Request, session: SessionDep, settings: SettingsDep, viewer: ViewerDep, log_name: str, format: str = "csv"
) -> Response:
    """The API's streamed export (GET /admin/v1/finance/{log}/export), opened with the console's session."""
    viewer.require(Scope.reports_read)
    log = _log(log_name)
    if format not in ("csv", "jsonl"):
        raise InvalidFilter("format must be csv or jsonl", filter="format")
    query = log_query(filter_values(request), viewer)
    return export_response(
        request, session, settings, viewer.principal, log, query, "csv" if format == "csv" else "jsonl"
    )


@router.get("/finance/{log_name}")
def log_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    log_name: str,
    page: Annotated[PageParams, Depends(page_params)],
) -> Response:
    viewer.require(Scope.reports_read)
    log = _log(log_name)
    params = filter_values(request)
    filters: service.Filters = log_filters(session, viewer.principal, log, log_query(params, viewer))
    rows = service.list_rows(session, log=log, filters=filters, before_id=page.before_id, limit=page.limit + 1)
    listed = make_page(rows, limit=page.limit, id_of=lambda row: row[ID_COLUMN[log.name]])
    base = f"/finance/{log.name}"
    next_url = next_page_url(request, base, listed.next_cursor, **params)
    exports = {
        fmt: url_for_page(request, f"{CONSOLE_PATH}{base}/export", format=fmt, **params) for fmt in ("csv", "jsonl")
    }
    return render(
        request,
        viewer,
        "finance/log.html",
        log=log,
        columns=TABLE_COLUMNS[log.name],
        rows=listed.items,
        next_url=next_url,
        filters=params,
        exports=exports,
        logs=list(logs.LOGS),
    )
