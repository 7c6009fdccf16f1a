"""`/admin/v1` reads: the finance logs (pages and streamed exports), daily and liability reports, reconciliation,
the sealed books, the dashboard, and the admin view of jobs."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, Literal

import httpx

from facemint_client._core import Call, Flow, parse_json, parse_list, query, stream, to_file
from facemint_client._resource import Listing, M, Resource, endpoint, flow, listing, paged
from facemint_client.admin_models import (
    AdminJob,
    AdminJobDetail,
    AuditEvent,
    DailyReport,
    Dashboard,
    ExportInfo,
    LedgerLogRow,
    LiabilityReport,
    RechargeLogRow,
    Reconciliation,
    ReconciliationRun,
    SealRun,
    StreamSeal,
    UsageLogRow,
)
from facemint_client.errors import APIConnectionError, IncompleteExport
from facemint_client.models import WebhookEventRecord

LogName = Literal["recharges", "usage", "ledger", "audit"]


def _log(
    log: str,
    item: type[Any],
    *,
    tenant_id: int | None,
    user_id: int | None,
    start: datetime | None,
    end: datetime | None,
    kind: str | None,
    batch_id: int | None,
    operator: str | None,
    job_id: str | None,
    limit: int | None,
) -> Listing[Any]:
    return listing(
        f"/admin/v1/finance/{log}",
        item,
        limit=limit,
        tenant_id=tenant_id,
        user_id=user_id,
        from_=start,
        to=end,
        kind=kind,
        batch_id=batch_id,
        operator=operator,
        job_id=job_id,
    )


class _Tail:
    """The end of a streamed body, to check its trailer without keeping the body."""

    def __init__(self) -> None:
        self.write_through: Callable[[bytes], object] = lambda chunk: None
        self.tail, self.size = b"", 0

    def __call__(self, chunk: bytes) -> None:
        self.write_through(chunk)
        self.size += len(chunk)
        self.tail = (self.tail + chunk)[-4096:]

    def complete(self, fmt: str) -> bool:
        lines = [line for line in self.tail.splitlines() if line.strip()]
        last = lines[-1] if lines else b""
        return last.startswith(b"# totals") if fmt == "csv" else last.startswith(b'{"_trailer"')


class Finance(Resource[M]):
    """Finance logs, newest first: `start` inclusive, `end` exclusive (UTC unless they carry an offset)."""

    @paged("GET /admin/v1/finance/recharges")
    def recharges(
        self,
        *,
        tenant_id: int | None = None,
        user_id: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        kind: str | None = None,
        batch_id: int | None = None,
        operator: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> Listing[RechargeLogRow]:
        return _log("recharges", RechargeLogRow, **_filters(locals()))

    @paged("GET /admin/v1/finance/usage")
    def usage(
        self,
        *,
        tenant_id: int | None = None,
        user_id: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        kind: str | None = None,
        batch_id: int | None = None,
        operator: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> Listing[UsageLogRow]:
        return _log("usage", UsageLogRow, **_filters(locals()))

    @paged("GET /admin/v1/finance/ledger")
    def ledger(
        self,
        *,
        tenant_id: int | None = None,
        user_id: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        kind: str | None = None,
        batch_id: int | None = None,
        operator: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> Listing[LedgerLogRow]:
        """Every ledger entry (`kind`: recharge, capture, adjustment, reversal or expiry), each on a user or pool
        account with the credit lots it wrote or burned (`lots`)."""
        return _log("ledger", LedgerLogRow, **_filters(locals()))

    @paged("GET /admin/v1/finance/audit")
    def audit(
        self,
        *,
        tenant_id: int | None = None,
        user_id: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        kind: str | None = None,
        batch_id: int | None = None,
        operator: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> Listing[AuditEvent]:
        return _log("audit", AuditEvent, **_filters(locals()))

    @flow(
        "GET /admin/v1/finance/recharges/export",
        "GET /admin/v1/finance/usage/export",
        "GET /admin/v1/finance/ledger/export",
        "GET /admin/v1/finance/audit/export",
    )
    def export(
        self,
        log: LogName,
        path: str | os.PathLike[str],
        *,
        format: Literal["csv", "jsonl"] = "csv",
        tenant_id: int | None = None,
        user_id: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        kind: str | None = None,
        batch_id: int | None = None,
        operator: str | None = None,
        job_id: str | None = None,
    ) -> Flow[ExportInfo]:
        """Stream a whole log (oldest first, one snapshot) into `path`. Raises `IncompleteExport` when the body
        ends without its totals trailer (the server's time limit cut it); `path` is then left untouched."""
        params = query(
            format=format,
            tenant_id=tenant_id,
            user_id=user_id,
            from_=start,
            to=end,
            kind=kind,
            batch_id=batch_id,
            operator=operator,
            job_id=job_id,
        )
        call = Call(
            method="GET",
            path=f"/admin/v1/finance/{log}/export",
            params=params,
            parse=lambda response: None,
            headers={"Accept": "*/*"},
        )
        tail = _Tail()

        def produce(write: Callable[[bytes], object]) -> Flow[httpx.Headers]:
            tail.write_through = write
            try:
                headers = yield from stream(self._config, call, tail)
            except APIConnectionError as exc:
                raise IncompleteExport(f"the {log} export was cut after {tail.size} bytes: {exc}") from exc
            if not tail.complete(format):
                raise IncompleteExport(f"the {log} export ended without its totals trailer ({tail.size} bytes)")
            return headers

        headers = yield from to_file(path, produce)
        rows = headers.get("x-export-rows")
        return ExportInfo(rows=int(rows) if rows else None, as_of=headers.get("x-export-as-of"), bytes=tail.size)

    @endpoint("GET /admin/v1/finance/reports/daily")
    def daily_report(
        self, *, start: date | None = None, end: date | None = None, tenant_id: int | None = None
    ) -> Call[DailyReport]:
        """Per tenant and UTC day, `start` to `end` included: opening + recharged - consumed + adjustments -
        expired = closing."""
        return Call(
            method="GET",
            path="/admin/v1/finance/reports/daily",
            params=query(from_=start, to=end, tenant_id=tenant_id),
            parse=parse_json(DailyReport),
        )

    @endpoint("GET /admin/v1/finance/reports/liability")
    def liability(
        self,
        *,
        at: datetime | None = None,
        tenant_id: int | None = None,
        expiry_bucket: Literal["day", "month"] | None = None,
    ) -> Call[LiabilityReport]:
        """Tokens outstanding on user and pool accounts, now or at a past instant; now, also split by when their
        lots expire (`by_expiry`: never, then per UTC `expiry_bucket`, month unless given)."""
        return Call(
            method="GET",
            path="/admin/v1/finance/reports/liability",
            params=query(at=at, tenant_id=tenant_id, expiry_bucket=expiry_bucket),
            parse=parse_json(LiabilityReport),
        )


def _filters(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if name != "self"}


class Reports(Resource[M]):
    """Platform-wide checks (platform staff only) and the dashboard."""

    @endpoint("GET /admin/v1/reconciliation")
    def reconciliation(self) -> Call[Reconciliation]:
        """Every ledger check over one snapshot, not recorded (`facemint reconcile` over HTTP)."""
        return Call(method="GET", path="/admin/v1/reconciliation", parse=parse_json(Reconciliation))

    @endpoint("POST /admin/v1/reconciliation/runs")
    def run_reconciliation(self) -> Call[ReconciliationRun]:
        """Reconcile now and record the outcome (a read-only check: running it twice records two runs)."""
        return Call(
            method="POST", path="/admin/v1/reconciliation/runs", parse=parse_json(ReconciliationRun), replay_safe=True
        )

    @paged("GET /admin/v1/reconciliation/runs")
    def reconciliation_runs(self, *, limit: int | None = None) -> Listing[ReconciliationRun]:
        return listing("/admin/v1/reconciliation/runs", ReconciliationRun, limit=limit)

    @endpoint("GET /admin/v1/ledger/seals")
    def seals(self) -> Call[builtins.list[StreamSeal]]:
        """The newest seal of each ledger stream."""
        return Call(method="GET", path="/admin/v1/ledger/seals", parse=parse_list(StreamSeal))

    @endpoint("POST /admin/v1/ledger/seals")
    def seal(self) -> Call[SealRun]:
        """Seal the finished rows not sealed yet (409 `sealer_busy` while a worker's sealer works)."""
        return Call(method="POST", path="/admin/v1/ledger/seals", parse=parse_json(SealRun), replay_safe=True)

    @endpoint("GET /admin/v1/reports/dashboard")
    def dashboard(self, *, tz: str | None = None, fresh: bool | None = None) -> Call[Dashboard]:
        return Call(
            method="GET",
            path="/admin/v1/reports/dashboard",
            params=query(tz=tz, fresh=fresh),
            parse=parse_json(Dashboard),
        )


class AdminJobs(Resource[M]):
    """Jobs across users (a tenant admin: its tenant's)."""

    @endpoint("GET /admin/v1/jobs/{job_id}")
    def get(self, job_id: str) -> Call[AdminJobDetail]:
        """The job with its hold (held, captured, released), timings and webhook attempts."""
        return Call(method="GET", path=f"/admin/v1/jobs/{job_id}", parse=parse_json(AdminJobDetail))

    @endpoint("POST /admin/v1/jobs/{job_id}/cancel")
    def cancel(self, job_id: str) -> Call[AdminJobDetail]:
        return Call(method="POST", path=f"/admin/v1/jobs/{job_id}/cancel", parse=parse_json(AdminJobDetail))

    @endpoint("GET /admin/v1/jobs/{job_id}/webhooks")
    def webhooks(self, job_id: str) -> Call[builtins.list[WebhookEventRecord]]:
        return Call(method="GET", path=f"/admin/v1/jobs/{job_id}/webhooks", parse=parse_list(WebhookEventRecord))

    @endpoint("GET /admin/v1/jobs/{job_id}/thumbnail")
    def thumbnail(self, job_id: str) -> Call[bytes]:
        """An image result, at most 256 pixels a side (needs `jobs:admin-results`)."""
        return Call(
            method="GET",
            path=f"/admin/v1/jobs/{job_id}/thumbnail",
            parse=lambda response: response.content,
            headers={"Accept": "*/*"},
        )

    @paged("GET /admin/v1/jobs")
    def list(
        self,
        *,
        status: str | None = None,
        tenant_id: int | None = None,
        user_id: int | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int | None = None,
    ) -> Listing[AdminJob]:
        return listing(
            "/admin/v1/jobs",
            AdminJob,
            limit=limit,
            status=status,
            tenant_id=tenant_id,
            user_id=user_id,
            created_after=created_after,
            created_before=created_before,
        )
