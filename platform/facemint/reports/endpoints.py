"""Reports under /admin/v1 (scope `reports:read`):

- GET /reconciliation: every check over the whole ledger, in one read-only snapshot (staff only).
- GET/POST /reconciliation/runs: the recorded runs (staff only), and a run now that is recorded
  (`reconciliation:run`: operators and platform admins; finance reads, and may run the unrecorded check above).
- GET /ledger/seals: the sealed books' heads (staff only); POST seals what is finished now (`ledger:adjust`:
  operators and platform admins).
- GET /reports/dashboard: the dashboard's figures, limited to a tenant admin's own tenant."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.db import snapshot_session
from facemint.deps import RedisDep, SessionDep, SettingsDep, page_params, require
from facemint.pagination import Page, PageParams, make_page
from facemint.reports import dashboard, service
from facemint.reports.errors import PlatformWideReport
from facemint.reports.schemas import (
    DashboardRead,
    DiscrepancyRead,
    ReconciliationRead,
    ReconciliationRunRead,
    SealRunRead,
    StreamSealRead,
)

router = APIRouter(prefix="/admin/v1", tags=["reports"])

Reader = Annotated[Principal, Depends(require(Scope.reports_read))]


def ensure_platform_staff(principal: Principal) -> None:
    if not principal.is_staff:
        # Tenant admins read their tenant's finance views, but these span every tenant.
        raise PlatformWideReport("the reconciliation and the sealed books cover every tenant: platform staff only")


@router.get("/reconciliation", response_model=ReconciliationRead)
def get_reconciliation(request: Request, principal: Reader) -> ReconciliationRead:
    """Every check over the whole ledger in one read-only snapshot (platform-wide: staff only). Not recorded:
    POST /reconciliation/runs runs the same checks and records the outcome."""
    ensure_platform_staff(principal)
    with snapshot_session(request.app.state.engine) as snapshot:
        report = service.reconcile_all(snapshot)
    return ReconciliationRead(
        balanced=report.balanced,
        checks=report.checks_run,
        totals=report.totals,
        discrepancies=[DiscrepancyRead(**asdict(d)) for d in report.discrepancies],
    )


@router.post("/reconciliation/runs", response_model=ReconciliationRunRead, status_code=status.HTTP_201_CREATED)
def run_reconciliation(
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Scope.reconciliation_run))],
) -> ReconciliationRunRead:
    """Reconcile now (one read-only snapshot) and record the outcome, balanced or not: 201 either way; the
    dashboard shows the newest run."""
    ensure_platform_staff(principal)
    run = service.run_and_record(session, engine=request.app.state.engine, requested_by=principal.label)
    return ReconciliationRunRead.model_validate(run, from_attributes=True)


@router.get("/reconciliation/runs", response_model=Page[ReconciliationRunRead])
def list_reconciliation_runs(
    session: SessionDep, principal: Reader, page: Annotated[PageParams, Depends(page_params)]
) -> Page[ReconciliationRunRead]:
    ensure_platform_staff(principal)
    runs = service.list_runs(session, before_id=page.before_id, limit=page.limit)
    items = [ReconciliationRunRead.model_validate(r, from_attributes=True) for r in runs]
    return make_page(items, limit=page.limit)


@router.get("/ledger/seals", response_model=list[StreamSealRead])
def list_seals(session: SessionDep, principal: Reader) -> list[StreamSealRead]:
    """The newest seal of each stream: when it was made, how far it reaches, how much is sealed in all."""
    ensure_platform_staff(principal)
    return [dashboard.stream_seal(d) for d in service.books_status(session)]


@router.post("/ledger/seals", response_model=SealRunRead)
def seal_books(
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Scope.ledger_adjust))],
) -> SealRunRead:
    """Seal the finished rows not sealed yet (at most a few batches per stream; the workers seal the rest). 409
    `sealer_busy` when a worker's sealer is at work."""
    ensure_platform_staff(principal)
    outcome = service.seal_now(session, max_rows=settings.seal_batch_max_rows)
    return SealRunRead(
        sealed={stream: outcome.rows(stream) for stream in service.STREAMS},
        batches=len(outcome.results),
        caught_up=outcome.caught_up,
        streams=[dashboard.stream_seal(d) for d in service.books_status(session)],
    )


@router.get("/reports/dashboard", response_model=DashboardRead)
def get_dashboard(
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    principal: Reader,
    tz: Annotated[str, Query(max_length=64, description="the IANA zone the days and hours are in")] = "UTC",
    fresh: Annotated[bool, Query(description="recompute the 30-day and 48-hour aggregates now")] = False,
) -> DashboardRead:
    """Tokens recharged and consumed per day (30 days, in `tz`), jobs per hour by status (48 hours), the top
    tenants by consumption, tokens held now, jobs queued and running, the webhook backlog; for staff also the job
    queue's length in Redis, the last reconciliation run and the sealed books' heads. A tenant admin gets its own
    tenant's figures."""
    return dashboard.dashboard(
        session,
        redis,
        tenant_scope=principal.tenant_scope,
        tz=dashboard.zone_named(tz),
        queue_name=settings.queue_name,
        fresh=fresh,
    )
