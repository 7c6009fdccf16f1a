from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.db import snapshot_session
from facemint.deps import require
from facemint.errors import Forbidden
from facemint.reports.schemas import DiscrepancyRead, ReconciliationRead
from facemint.reports.service import reconcile_all

router = APIRouter(prefix="/admin/v1", tags=["reports"])


@router.get("/reconciliation", response_model=ReconciliationRead)
def get_reconciliation(
    request: Request, principal: Annotated[Principal, Depends(require(Scope.reports_read))]
) -> ReconciliationRead:
    """Every check over the whole ledger in one read-only snapshot (platform-wide: staff only)."""
    if not principal.is_staff:
        # Tenant admins read their tenant's finance views, but this report spans every tenant.
        raise Forbidden("the reconciliation report covers every tenant: platform staff only")
    with snapshot_session(request.app.state.engine) as snapshot:
        report = reconcile_all(snapshot)
    return ReconciliationRead(
        balanced=report.balanced,
        checks=report.checks_run,
        totals=report.totals,
        discrepancies=[DiscrepancyRead(**asdict(d)) for d in report.discrepancies],
    )
