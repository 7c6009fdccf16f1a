"""The recharges screen: one recharge (the form carries an idempotency key minted when it was drawn, so a double
submit replays), a bulk recharge (upload -> the server's dry run as a preview -> confirm -> a result page that
follows the background apply, see facemint.console.bulk), and the batch history with each batch's rows. Every
action calls what the /admin/v1/recharges routes call, with the same scopes, four-eyes policy and ceiling."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from billing.recharge import service as batches
from facemint import tenancy
from facemint.approvals import service as approvals
from facemint.approvals.service import Held
from facemint.auth.scopes import Scope
from facemint.console import bulk
from facemint.console.forms import id_filter, new_idempotency_key, typed_int, validated
from facemint.console.web import CheckedForm, ViewerDep, form_text, is_htmx, next_page_url, redirect, render
from facemint.deps import RedisDep, SessionDep, SettingsDep, page_params
from facemint.errors import PayloadTooLarge, Unprocessable
from facemint.pagination import PageParams, make_page
from facemint.recharges import batch as batch_service
from facemint.recharges import service as recharge_service
from facemint.recharges.errors import BatchNotFound, ReasonRequired
from facemint.recharges.schemas import RechargeCreate

router = APIRouter()
# A preview lists this many failed rows; all of them are in its CSV download.
FAILURES_SHOWN = 500
TARGET_KINDS = ("email", "user_id", "tenant_id")


def _store(redis: RedisDep, settings: SettingsDep) -> bulk.PreviewStore:
    return bulk.PreviewStore(redis, ttl_seconds=settings.console_preview_ttl_seconds)


StoreDep = Annotated[bulk.PreviewStore, Depends(_store)]


RECENT_BATCHES = 10


def _index(request: Request, session: SessionDep, viewer: ViewerDep, *, status: int = 200, **context: Any) -> Response:
    """The forms (each with a fresh key) and the latest batches."""
    recent = batches.list_batches(
        session, tenant_id=viewer.principal.tenant_scope, before_id=None, limit=RECENT_BATCHES
    )
    return render(
        request, viewer, "recharges/index.html", status=status, form_key=new_idempotency_key(), recent=recent, **context
    )


@router.get("/recharges")
def recharges_page(request: Request, session: SessionDep, viewer: ViewerDep) -> Response:
    viewer.require(Scope.recharges_read)
    return _index(request, session, viewer, outcome=None, held=None)


@router.post("/recharges")
def recharge_one(
    request: Request, session: SessionDep, settings: SettingsDep, viewer: ViewerDep, form: CheckedForm
) -> Response:
    """As POST /admin/v1/recharges with the form's key: a resubmitted form answers with the first outcome."""
    viewer.require(Scope.recharges_write)
    kind = form_text(form, "target_kind")
    if kind not in TARGET_KINDS:
        raise Unprocessable("choose whom to credit: an email, a user id or a tenant's pool")
    key = form_text(form, "idempotency_key")
    if not key or len(key) > 255 or not key.isascii():
        raise Unprocessable("the form has no idempotency key; reload the page")
    fields: dict[str, Any] = {
        kind: form_text(form, "target"),
        "amount": typed_int(form_text(form, "amount")),
        "reason": form_text(form, "reason"),
        "reference": form_text(form, "reference") or None,
    }
    if kind != "email":
        fields[kind] = typed_int(fields[kind])
    data = validated(RechargeCreate, fields)
    outcome = recharge_service.submit_recharge(
        session,
        context=viewer.context,
        data=data,
        idempotency_key=key,
        policy=approvals.Policy.from_settings(settings),
        ceiling=settings.recharge_max_amount,
    )
    if isinstance(outcome, Held):
        return _index(request, session, viewer, status=202, outcome=None, held=outcome)
    return _index(request, session, viewer, status=200 if outcome.replayed else 201, outcome=outcome, held=None)


# --- bulk: upload -> preview -> confirm -> result -----------------------------------------------------------


@router.post("/recharges/bulk/preview")
def bulk_preview(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    store: StoreDep,
    form: CheckedForm,
) -> Response:
    """The file dry-run as POST /admin/v1/recharges/batch?dry_run=true would, stored as a preview with the key
    confirming it will use; then the preview's own page (a refresh re-reads it, it never uploads again)."""
    viewer.require(Scope.recharges_write)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise Unprocessable("choose a CSV file to upload")
    body = upload.file.read(settings.batch_max_bytes + 1)
    if len(body) > settings.batch_max_bytes:
        raise PayloadTooLarge(
            f"the file is larger than {settings.batch_max_bytes} bytes", max_bytes=settings.batch_max_bytes
        )
    mode = form_text(form, "mode")
    if mode not in ("atomic", "partial"):
        raise Unprocessable("mode must be atomic or partial")
    reason = form_text(form, "reason")[:500]
    if not reason:
        raise ReasonRequired("a reason is required")
    tenant_text = form_text(form, "tenant_id")
    tenant_id = typed_int(tenant_text) if tenant_text else None
    if isinstance(tenant_id, str):
        raise Unprocessable("tenant must be a tenant id")
    preview = bulk.make_preview(
        session,
        context=viewer.context,
        settings=settings,
        body=body,
        filename=upload.filename or "upload.csv",
        mode=mode,
        reason=reason,
        tenant_id=tenant_id,
    )
    store.save(preview, body)
    return redirect(request, f"/recharges/bulk/{preview.preview_id}")


@router.get("/recharges/bulk/{preview_id}")
def bulk_preview_page(request: Request, viewer: ViewerDep, store: StoreDep, preview_id: str) -> Response:
    viewer.require(Scope.recharges_write)
    preview = store.load(preview_id, user_id=viewer.principal.user_id)
    return render(
        request,
        viewer,
        "recharges/preview.html",
        preview=preview,
        failures=preview.result["failed"][:FAILURES_SHOWN],
        run=store.run_state(preview_id),
    )


@router.get("/recharges/bulk/{preview_id}/failures.csv")
def bulk_failures(viewer: ViewerDep, store: StoreDep, preview_id: str) -> Response:
    """Every failed row of a preview, for fixing the file."""
    viewer.require(Scope.recharges_write)
    preview = store.load(preview_id, user_id=viewer.principal.user_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "code", "detail", "email", "user_id"])
    for failure in preview.result["failed"]:
        writer.writerow(
            [failure["row"], failure["code"], failure["detail"], failure.get("email"), failure.get("user_id")]
        )
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="preview-{preview_id[:8]}-failures.csv"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/recharges/bulk/{preview_id}/confirm")
def bulk_confirm(
    request: Request,
    settings: SettingsDep,
    viewer: ViewerDep,
    store: StoreDep,
    preview_id: str,
    form: CheckedForm,
) -> Response:
    """Start applying the preview under its own key, or, when a run is under way or done, show that one."""
    viewer.require(Scope.recharges_write)
    preview = store.load(preview_id, user_id=viewer.principal.user_id)
    bulk.start_apply(request.app.state.sessionmaker, store, settings=settings, preview=preview, context=viewer.context)
    return redirect(request, f"/recharges/bulk/{preview_id}/run")


@router.get("/recharges/bulk/{preview_id}/run")
def bulk_run(request: Request, viewer: ViewerDep, store: StoreDep, preview_id: str) -> Response:
    """The run's progress (htmx polls the fragment until it is done), then its result."""
    viewer.require(Scope.recharges_write)
    preview = store.load(preview_id, user_id=viewer.principal.user_id)
    run = store.run_state(preview_id)
    template = "recharges/_run.html" if is_htmx(request) else "recharges/run.html"
    failed = (run.result or run.error or {}).get("failed", []) if run else []
    return render(request, viewer, template, preview=preview, run=run, failures=failed[:FAILURES_SHOWN])


# --- batch history ----------------------------------------------------------------------------------------


@router.get("/recharges/batches")
def batches_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    page: Annotated[PageParams, Depends(page_params)],
    tenant_id: str = "",
) -> Response:
    """As GET /admin/v1/recharges/batches: newest first; a tenant admin sees only its tenant's."""
    viewer.require(Scope.recharges_read)
    tenant_filter = id_filter(tenant_id)
    if tenant_filter is not None:
        viewer.principal.ensure_tenant_visible(tenant_filter, what="tenant")
    scope = viewer.principal.tenant_scope
    rows = batches.list_batches(
        session,
        tenant_id=scope if scope is not None else tenant_filter,
        before_id=page.before_id,
        limit=page.limit + 1,
    )
    listed = make_page(rows, limit=page.limit, id_of=lambda row: row["id"])
    next_url = next_page_url(request, "/recharges/batches", listed.next_cursor, tenant_id=tenant_filter)
    return render(
        request, viewer, "recharges/batches.html", batches=listed.items, next_url=next_url, tenant_id=tenant_filter
    )


@router.get("/recharges/batches/{batch_id}")
def batch_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    batch_id: int,
    page: Annotated[PageParams, Depends(page_params)],
) -> Response:
    """As GET /admin/v1/recharges/batches/{id} (the failed rows redacted for a tenant as there) and its rows
    (GET .../rows), a page at a time in file order."""
    viewer.require(Scope.recharges_read)
    row = batches.get_batch(session, batch_id=batch_id) if 0 < batch_id < 2**63 else None
    scope = viewer.principal.tenant_scope
    if row is None or not tenancy.is_visible(scope, row["tenant_id"]):
        raise BatchNotFound(f"recharge batch {batch_id} not found")
    result = tenancy.redact_batch_result(row["result"], scope) or {}
    rows = batch_service.batch_rows(session, batch_id=batch_id, after_row=page.before_id, limit=page.limit + 1)
    listed = make_page(rows, limit=page.limit, id_of=lambda item: item["row_no"])
    next_url = next_page_url(request, f"/recharges/batches/{batch_id}", listed.next_cursor)
    return render(
        request,
        viewer,
        "recharges/batch.html",
        batch=row,
        result=result,
        rows=listed.items,
        failures=result.get("failed", [])[:FAILURES_SHOWN],
        next_url=next_url,
    )
