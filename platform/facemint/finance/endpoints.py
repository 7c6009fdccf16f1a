"""Finance views under /admin/v1/finance (scope `reports:read`: finance, platform admins and operators see every
tenant; a tenant admin sees only its own, on every route; nothing here writes).

- Logs, newest first with cursor pagination: /recharges, /usage, /ledger, /audit.
- The same logs streamed as CSV or JSONL from one snapshot, with a totals trailer: /{log}/export.
- Reports: /reports/daily (per tenant and UTC day) and /reports/liability (at an instant)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, page_params, require
from facemint.finance import logs, reports, service
from facemint.finance.exports import ExportFormat, ExportStream
from facemint.finance.schemas import (
    AuditRow,
    DailyReport,
    DailyReportRow,
    LedgerRow,
    Liability,
    LiabilityReport,
    RechargeRow,
    TenantLiability,
    UsageRow,
)
from facemint.pagination import Page, PageParams, make_page

router = APIRouter(prefix="/admin/v1/finance", tags=["finance"])

Reader = Annotated[Principal, Depends(require(Scope.reports_read))]
Id = Annotated[int | None, Query(gt=0, lt=2**63)]
RowT = TypeVar("RowT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class LogQuery:
    tenant_id: int | None
    user_id: int | None
    start: datetime | None
    end: datetime | None
    kind: str | None
    batch_id: int | None
    operator: str | None
    job_id: str | None


async def log_query(
    tenant_id: Id = None,
    user_id: Id = None,
    from_: Annotated[datetime | None, Query(alias="from", description="UTC, inclusive")] = None,
    to: Annotated[datetime | None, Query(description="UTC, exclusive")] = None,
    kind: Annotated[
        str | None,
        Query(
            max_length=100,
            description="recharges: single|batch; usage: hold status; ledger: transaction kind; audit: action",
        ),
    ] = None,
    batch_id: Id = None,
    operator: Annotated[
        str | None,
        Query(max_length=100, description="recharges/ledger: the actor label; usage/audit: `user:ID` or `key:ID`"),
    ] = None,
    job_id: Annotated[str | None, Query(max_length=100, description="a job's public id or numeric id")] = None,
) -> LogQuery:
    return LogQuery(tenant_id, user_id, from_, to, kind, batch_id, operator, job_id)


Filters = Annotated[LogQuery, Depends(log_query)]
Pagination = Annotated[PageParams, Depends(page_params)]
Format = Annotated[ExportFormat, Query(alias="format")]


def _filters(session: SessionDep, principal: Principal, log: logs.LogSpec, query: LogQuery) -> service.Filters:
    if query.tenant_id is not None:
        principal.ensure_tenant_visible(query.tenant_id, what="tenant")
    return service.resolve_filters(
        session,
        log=log,
        tenant_scope=principal.tenant_scope,
        tenant_id=query.tenant_id,
        user_id=query.user_id,
        start=query.start,
        end=query.end,
        kind=query.kind,
        batch_id=query.batch_id,
        operator=query.operator,
        job_id=query.job_id,
    )


def _page(
    session: SessionDep,
    principal: Principal,
    log: logs.LogSpec,
    query: LogQuery,
    page: PageParams,
    model: type[RowT],
    id_name: str,
) -> Page[RowT]:
    filters = _filters(session, principal, log, query)
    rows = service.list_rows(session, log=log, filters=filters, before_id=page.before_id, limit=page.limit + 1)
    items = [model.model_validate(row) for row in rows]
    return make_page(items, limit=page.limit, id_of=lambda item: getattr(item, id_name))


def _export(
    request: Request,
    session: SessionDep,
    principal: Principal,
    log: logs.LogSpec,
    query: LogQuery,
    fmt: ExportFormat,
) -> StreamingResponse:
    filters = _filters(session, principal, log, query)
    stream = ExportStream(request.app.state.engine, log=log, filters=filters, fmt=fmt)
    chunks, totals = stream.start()  # the snapshot is open and the totals known before the 200 goes out
    headers = {
        "Content-Disposition": f'attachment; filename="{stream.filename}"',
        "Cache-Control": "no-store",
        "X-Export-Rows": str(totals["rows"]),
        "X-Export-As-Of": str(totals["as_of"]),
    }
    return StreamingResponse(chunks, media_type=stream.media_type, headers=headers)


# --- logs --------------------------------------------------------------------------------------------------


@router.get("/recharges", response_model=Page[RechargeRow])
def list_recharges(session: SessionDep, principal: Reader, query: Filters, page: Pagination) -> Page[RechargeRow]:
    """Recharges, single and batch: one row per credited entry (a batch row, or a single recharge's target)."""
    return _page(session, principal, logs.RECHARGES, query, page, RechargeRow, "entry_id")


@router.get("/usage", response_model=Page[UsageRow])
def list_usage(session: SessionDep, principal: Reader, query: Filters, page: Pagination) -> Page[UsageRow]:
    """Usage: one row per job with its hold (held), what was captured and what was released."""
    return _page(session, principal, logs.USAGE, query, page, UsageRow, "id")


@router.get("/ledger", response_model=Page[LedgerRow])
def list_ledger(session: SessionDep, principal: Reader, query: Filters, page: Pagination) -> Page[LedgerRow]:
    """Ledger entries with each account's balance after the entry. A tenant admin sees its accounts' entries."""
    return _page(session, principal, logs.LEDGER, query, page, LedgerRow, "entry_id")


@router.get("/audit", response_model=Page[AuditRow])
def list_audit(session: SessionDep, principal: Reader, query: Filters, page: Pagination) -> Page[AuditRow]:
    """Audit events; fields named like a secret, hash, key or password are left out of before/after."""
    return _page(session, principal, logs.AUDIT, query, page, AuditRow, "id")


_EXPORT_DOC = (
    "Streamed from one read-only snapshot, oldest first. CSV ends with a `# totals` row, JSONL with a "
    "`_trailer` line: row count and sums of exactly the rows above, at the snapshot in `as_of`."
)


@router.get("/recharges/export", response_class=StreamingResponse, description=_EXPORT_DOC)
def export_recharges(
    request: Request, session: SessionDep, principal: Reader, query: Filters, fmt: Format = "csv"
) -> StreamingResponse:
    return _export(request, session, principal, logs.RECHARGES, query, fmt)


@router.get("/usage/export", response_class=StreamingResponse, description=_EXPORT_DOC)
def export_usage(
    request: Request, session: SessionDep, principal: Reader, query: Filters, fmt: Format = "csv"
) -> StreamingResponse:
    return _export(request, session, principal, logs.USAGE, query, fmt)


@router.get("/ledger/export", response_class=StreamingResponse, description=_EXPORT_DOC)
def export_ledger(
    request: Request, session: SessionDep, principal: Reader, query: Filters, fmt: Format = "csv"
) -> StreamingResponse:
    return _export(request, session, principal, logs.LEDGER, query, fmt)


@router.get("/audit/export", response_class=StreamingResponse, description=_EXPORT_DOC)
def export_audit(
    request: Request, session: SessionDep, principal: Reader, query: Filters, fmt: Format = "csv"
) -> StreamingResponse:
    return _export(request, session, principal, logs.AUDIT, query, fmt)


# --- reports -----------------------------------------------------------------------------------------------


@router.get("/reports/daily", response_model=DailyReport)
def daily_report(
    session: SessionDep,
    principal: Reader,
    from_: Annotated[date | None, Query(alias="from", description="first UTC day (default: `to` - 29 days)")] = None,
    to: Annotated[date | None, Query(description="last UTC day, included (default: today)")] = None,
    tenant_id: Id = None,
) -> DailyReport:
    """Per tenant and UTC day over its user and pool accounts: opening, recharged, consumed (captures),
    adjustments (adjustments and reversals) and closing, where opening + recharged - consumed + adjustments =
    closing. `released` (tokens returned from holds without being charged) is informational: a hold moves tokens
    between available and held, never the balance, so it is not part of that identity."""
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    first, last = reports.default_days(from_, to)
    rows = reports.daily_report(
        session, first=first, last=last, tenant_scope=principal.tenant_scope, tenant_id=tenant_id
    )
    return DailyReport(
        first_day=first,
        last_day=last,
        rows=[DailyReportRow.model_validate(row, from_attributes=True) for row in rows],
    )


def _line(balance: int, held: int) -> Liability:
    return Liability(balance=balance, held=held, available=balance - held)


@router.get("/reports/liability", response_model=LiabilityReport)
def liability_report(
    session: SessionDep,
    principal: Reader,
    at: Annotated[datetime | None, Query(description="UTC instant; default: now (from the accounts)")] = None,
    tenant_id: Id = None,
) -> LiabilityReport:
    """Outstanding liability: tokens on user and pool accounts, held and available, in total and per tenant.
    Now: the accounts' balance and held. A past instant: entries up to it, and the holds open at it."""
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    lines = reports.liability(session, at=at, tenant_scope=principal.tenant_scope, tenant_id=tenant_id)
    per_tenant: dict[int | None, dict[str, list[int]]] = defaultdict(lambda: {"user": [0, 0], "pool": [0, 0]})
    kinds: dict[str, list[int]] = {"user": [0, 0], "pool": [0, 0]}
    for line in lines:
        for bucket in (per_tenant[line.tenant_id][line.kind], kinds[line.kind]):
            bucket[0] += line.balance
            bucket[1] += line.held
    tenants: list[TenantLiability] = []
    for tenant, parts in sorted(per_tenant.items(), key=lambda item: item[0] or 0):
        users, pool = parts["user"], parts["pool"]
        tenants.append(
            TenantLiability(
                tenant_id=tenant,
                users=_line(*users),
                pool=_line(*pool),
                total=_line(users[0] + pool[0], users[1] + pool[1]),
            )
        )
    total: Any = (kinds["user"][0] + kinds["pool"][0], kinds["user"][1] + kinds["pool"][1])
    return LiabilityReport(
        at=at, users=_line(*kinds["user"]), pool=_line(*kinds["pool"]), total=_line(*total), tenants=tenants
    )
