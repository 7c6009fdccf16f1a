"""Finance views under /admin/v1/finance (scope `reports:read`: finance, platform admins and operators see every
tenant; a tenant admin sees only its own, on every route; nothing here writes).

- Logs, newest first with cursor pagination: /recharges, /usage, /ledger, /audit.
- The same logs streamed as CSV or JSONL from one snapshot, with a totals trailer: /{log}/export. Concurrent
  exports are capped per tenant and in total (429), each snapshot has a time limit, and a client that goes away
  ends its export's database transaction at once (see `ExportResponse`, `export_limits`, `exports`).
- Reports: /reports/daily (per tenant and UTC day) and /reports/liability (at an instant)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel
from redis.asyncio import Redis as AsyncRedis
from starlette.types import Receive, Scope, Send

from facemint import slots
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope as AuthScope
from facemint.deps import SessionDep, SettingsDep, page_params, require
from facemint.finance import export_limits, logs, reports, service
from facemint.finance.errors import ExportTimeLimit
from facemint.finance.exports import MEDIA_TYPES, ExportAborted, ExportFormat, ExportStream, ExportTimedOut
from facemint.finance.schemas import (
    AuditRow,
    DailyReport,
    DailyReportRow,
    LedgerRow,
    LiabilityReport,
    RechargeRow,
    UsageRow,
)
from facemint.pagination import Page, PageParams, make_page
from facemint.timestamps import IsoDate, UtcDatetime

router = APIRouter(prefix="/admin/v1/finance", tags=["finance"])

Reader = Annotated[Principal, Depends(require(AuthScope.reports_read))]
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
    from_: Annotated[UtcDatetime | None, Query(alias="from", description="inclusive; UTC unless an offset")] = None,
    to: Annotated[UtcDatetime | None, Query(description="exclusive; UTC unless an offset")] = None,
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


def log_filters(session: SessionDep, principal: Principal, log: logs.LogSpec, query: LogQuery) -> service.Filters:
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
    filters = log_filters(session, principal, log, query)
    rows = service.list_rows(session, log=log, filters=filters, before_id=page.before_id, limit=page.limit + 1)
    items = [model.model_validate(row) for row in rows]
    return make_page(items, limit=page.limit, id_of=lambda item: getattr(item, id_name))


def export_response(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Principal,
    log: logs.LogSpec,
    query: LogQuery,
    fmt: ExportFormat,
) -> ExportResponse:
    # The slot first: a refused export (429) costs no database work.
    lease = export_limits.take_export_slot(request.app.state.redis, settings, tenant_scope=principal.tenant_scope)
    try:
        filters = log_filters(session, principal, log, query)
    except BaseException:
        slots.release(request.app.state.redis, lease)
        raise
    stream = ExportStream(
        request.app.state.engine, log=log, filters=filters, fmt=fmt, max_seconds=settings.export_max_seconds
    )
    return ExportResponse(stream, redis=request.app.state.async_redis, lease=lease)


class ExportResponse(Response):
    """An export streamed while listening for the client. Not a StreamingResponse over the sync generator: when the
    client leaves, that one stops iterating but leaves the generator, its snapshot transaction and its connection to
    garbage collection. Here the snapshot opens only once the response runs, and an `http.disconnect` at any point
    (totals still computing, COPY blocked on a full pipe) aborts the stream at once: the backend is cancelled and
    the connection dropped. The export's slot is released however the stream ends.

    A time limit reached before the first byte answers 503 (problem+json); after it, the body is cut without its
    trailer and the connection closed without ending the chunked body, so no client mistakes it for a whole one."""

    def __init__(self, stream: ExportStream, *, redis: AsyncRedis, lease: slots.Lease) -> None:
        self.status_code = 200
        self.media_type = stream.media_type
        self.background = None
        self.stream = stream
        self.redis = redis
        self.lease = lease
        self.init_headers(
            {
                "Content-Disposition": f'attachment; filename="{stream.filename}"',
                "Cache-Control": "no-store",
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            # Cancelling the backend is a round trip to the server: not on the event loop, and not queued behind a
            # busy thread pool either.
            threading.Thread(
                target=self.stream.abort, args=(ExportAborted("the client disconnected"),), daemon=True
            ).start()

        listener = asyncio.create_task(listen())
        chunks: Generator[bytes] | None = None
        try:
            try:
                started, totals = await run_in_threadpool(self.stream.start)
            except ExportTimedOut as exc:
                raise ExportTimeLimit(str(exc)) from exc
            chunks = started
            headers = [
                *self.raw_headers,
                (b"x-export-rows", str(totals["rows"]).encode()),
                (b"x-export-as-of", str(totals["as_of"]).encode()),
            ]
            await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
            while (chunk := await run_in_threadpool(_next_chunk, started)) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if self.background is not None:
                await self.background()
        except ExportAborted:
            if not gone.is_set():
                raise  # the time limit, mid-body: the server closes the connection without ending the body
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            if chunks is not None:
                await run_in_threadpool(chunks.close)  # ended already, unless this request itself failed
            await slots.release_async(self.redis, self.lease)


def _next_chunk(chunks: Generator[bytes]) -> bytes | None:
    return next(chunks, None)


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
    "`_trailer` line: row count and sums of exactly the rows above, at the snapshot in `as_of`. An export without "
    "its trailer is incomplete (it was cut at its time limit). Concurrent exports are limited per tenant and in "
    "total."
)
_EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the log, ending with its totals trailer",
        "content": {media_type.split(";")[0]: {"schema": {"type": "string"}} for media_type in MEDIA_TYPES.values()},
    },
    429: {
        "description": "too many concurrent exports for this tenant (platform staff count as one) or on the "
        "service: nothing was started; retry after `Retry-After` seconds"
    },
    503: {
        "description": "the export's time limit ran out before its first byte (`export_time_limit`), or Postgres or "
        "Redis is unavailable"
    },
}


def _export_route(path: str) -> Any:
    return router.get(path, response_class=Response, responses=_EXPORT_RESPONSES, description=_EXPORT_DOC)


@_export_route("/recharges/export")
def export_recharges(
    request: Request, session: SessionDep, settings: SettingsDep, principal: Reader, query: Filters, fmt: Format = "csv"
) -> Response:
    return export_response(request, session, settings, principal, logs.RECHARGES, query, fmt)


@_export_route("/usage/export")
def export_usage(
    request: Request, session: SessionDep, settings: SettingsDep, principal: Reader, query: Filters, fmt: Format = "csv"
) -> Response:
    return export_response(request, session, settings, principal, logs.USAGE, query, fmt)


@_export_route("/ledger/export")
def export_ledger(
    request: Request, session: SessionDep, settings: SettingsDep, principal: Reader, query: Filters, fmt: Format = "csv"
) -> Response:
    return export_response(request, session, settings, principal, logs.LEDGER, query, fmt)


@_export_route("/audit/export")
def export_audit(
    request: Request, session: SessionDep, settings: SettingsDep, principal: Reader, query: Filters, fmt: Format = "csv"
) -> Response:
    return export_response(request, session, settings, principal, logs.AUDIT, query, fmt)


# --- reports -----------------------------------------------------------------------------------------------


@router.get("/reports/daily", response_model=DailyReport)
def daily_report(
    session: SessionDep,
    principal: Reader,
    from_: Annotated[IsoDate | None, Query(alias="from", description="first UTC day (default: `to` - 29 days)")] = None,
    to: Annotated[IsoDate | None, Query(description="last UTC day, included (default: today)")] = None,
    tenant_id: Id = None,
) -> DailyReport:
    """Per tenant and UTC day over its user and pool accounts: opening, recharged, consumed (captures),
    adjustments (adjustments and reversals), expired (credit lots that reached their expiry) and closing, where
    opening + recharged - consumed + adjustments - expired = closing. `released` (tokens returned from holds
    without being charged) is informational: a hold moves tokens between available and held, never the balance, so
    it is not part of that identity."""
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


@router.get("/reports/liability", response_model=LiabilityReport)
def liability_report(
    session: SessionDep,
    principal: Reader,
    at: Annotated[UtcDatetime | None, Query(description="an instant (UTC unless an offset); default: now")] = None,
    tenant_id: Id = None,
    expiry_bucket: Annotated[
        Literal["day", "month"], Query(description="the split by expiry (now only): per UTC day or month")
    ] = "month",
) -> LiabilityReport:
    """Outstanding liability: tokens on user and pool accounts, held and available, in total and per tenant.
    Now: the accounts' balance and held, and the same tokens split by when their credit lots expire (never, then per
    UTC day or month). A past instant: entries up to it, and the holds open at it (no split by expiry)."""
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    return reports.liability_report(
        session, at=at, tenant_scope=principal.tenant_scope, tenant_id=tenant_id, expiry_bucket=expiry_bucket
    )
