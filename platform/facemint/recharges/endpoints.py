from __future__ import annotations

from itertools import permutations
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse

from billing.recharge import service as batches
from facemint import tenancy
from facemint.approvals import service as approvals
from facemint.approvals.endpoints import HELD_RESPONSES, held_response
from facemint.approvals.service import Held
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.balances.service import lot_read
from facemint.deps import IdempotencyKey, SessionDep, SettingsDep, page_params, request_context, require
from facemint.errors import PayloadTooLarge, UnsupportedMediaType
from facemint.pagination import Page, PageParams, make_page
from facemint.recharges import batch as batch_service
from facemint.recharges import service as recharge_service
from facemint.recharges.errors import BatchNotFound, ReasonRequired
from facemint.recharges.parsing import OPTIONAL_COLUMNS, parse_csv, parse_json
from facemint.recharges.schemas import (
    BatchDetail,
    BatchResult,
    BatchRow,
    BatchSummary,
    RechargeCreate,
    RechargeRead,
)

router = APIRouter(prefix="/admin/v1/recharges", tags=["recharges"])
BATCH_PATH = "/admin/v1/recharges/batch"
# What the batch parsers take (facemint.recharges.parsing), said in the OpenAPI document: a body of another shape
# is 400 or 422; a schema-valid one may still meet rows that fail (unknown or frozen users: 422 in atomic mode).
# The optional columns, each at most once, in any order: every ordering of every non-empty subset.
_OPTIONAL_HEADERS = [
    "".join(f",{column}" for column in order)
    for n in range(1, len(OPTIONAL_COLUMNS) + 1)
    for order in permutations(OPTIONAL_COLUMNS, n)
]
BATCH_CSV_SCHEMA = {
    "type": "string",
    "description": "a header `email,amount` or `user_id,amount`, then any of `reference`, `priority` (0 to 100, lower "
    "is spent first; default 50) and `expires_at` (ISO 8601 with a time zone; default: never), then one row per line",
    "pattern": r"^(email|user_id),amount(" + "|".join(_OPTIONAL_HEADERS) + r")?\r?\n",
}
BATCH_JSON_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["items"],
    "properties": {
        "reason": {"type": "string", "maxLength": 500},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["amount"],
                "properties": {
                    "email": {"type": "string", "maxLength": 320},
                    "user_id": {"type": "integer", "minimum": 1},
                    "amount": {"type": "integer", "minimum": 1},
                    "reference": {"type": "string", "maxLength": 200},
                    "priority": {"type": "integer", "minimum": 0, "maximum": 100},
                    "expires_at": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}

Writer = Annotated[Principal, Depends(require(Scope.recharges_write))]
Reader = Annotated[Principal, Depends(require(Scope.recharges_read))]


@router.post("", response_model=RechargeRead, status_code=status.HTTP_201_CREATED, responses=HELD_RESPONSES)
def create_recharge(
    body: RechargeCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
    idempotency_key: IdempotencyKey,
) -> RechargeRead | JSONResponse:
    outcome = recharge_service.submit_recharge(
        session,
        context=request_context(request, principal, settings),
        data=body,
        idempotency_key=idempotency_key,
        policy=approvals.Policy.from_settings(settings),
        ceiling=settings.recharge_max_amount,
    )
    if isinstance(outcome, Held):
        return held_response(outcome)
    if outcome.replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return RechargeRead(
        transaction_id=outcome.transaction_id,
        amount=outcome.amount,
        replayed=outcome.replayed,
        target=outcome.target,
        balance=outcome.balance,
        held=outcome.held,
        available=outcome.balance - outcome.held,
        lots=[lot_read(lot) for lot in outcome.lots],
    )


async def limited_body(request: Request) -> bytes:
    """The request body, refused with 413 past FACEMINT_BATCH_MAX_BYTES before it is all read."""
    limit: int = request.app.state.settings.batch_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes", max_bytes=limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes", max_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/batch",
    response_model=BatchResult,
    responses={
        201: {"description": "batch applied"},
        **HELD_RESPONSES,
        422: {"description": "atomic batch with failing rows: nothing applied, every failure listed"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": BATCH_JSON_SCHEMA},
                "text/csv": {"schema": BATCH_CSV_SCHEMA},
            },
        }
    },
)
def create_batch(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
    idempotency_key: IdempotencyKey,
    body: Annotated[bytes, Depends(limited_body)],
    mode: Literal["atomic", "partial"] = "atomic",
    dry_run: bool = False,
    reason: Annotated[str | None, Query(max_length=500)] = None,
    tenant_id: Annotated[int | None, Query(gt=0, lt=2**63, description="staff: every row must belong to it")] = None,
) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "text/csv":
        parsed = parse_csv(body, max_rows=settings.batch_max_rows, ceiling=settings.recharge_max_amount)
        body_reason = None
    elif content_type == "application/json":
        body_reason, parsed = parse_json(body, max_rows=settings.batch_max_rows, ceiling=settings.recharge_max_amount)
    else:
        raise UnsupportedMediaType("send text/csv or application/json")
    final_reason = (reason or body_reason or "").strip()
    if not final_reason:
        raise ReasonRequired(
            "a reason is required (query parameter, or `reason` in the JSON body)",
        )
    outcome = batch_service.submit_batch(
        session,
        context=request_context(request, principal, settings),
        request=batch_service.BatchRequest(
            mode=mode,
            dry_run=dry_run,
            reason=final_reason[:500],
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            content_kind=content_type,
            body=body,
        ),
        parsed=parsed,
        policy=approvals.Policy.from_settings(settings),
    )
    if outcome.held is not None:
        return held_response(outcome.held)
    headers = {} if outcome.created or dry_run else {"Idempotent-Replayed": "true"}
    return JSONResponse(outcome.result, status_code=201 if outcome.created else 200, headers=headers)


@router.get("/batches", response_model=Page[BatchSummary])
def list_batches(
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    tenant_id: Annotated[int | None, Query(gt=0, lt=2**63)] = None,
) -> Page[BatchSummary]:
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    rows = batches.list_batches(
        session,
        tenant_id=principal.tenant_scope if principal.tenant_scope is not None else tenant_id,
        before_id=page.before_id,
        limit=page.limit + 1,
    )
    return make_page([BatchSummary(**row) for row in rows], limit=page.limit)


@router.get("/batches/{batch_id}", response_model=BatchDetail)
def get_batch(batch_id: int, session: SessionDep, principal: Reader) -> BatchDetail:
    row = batches.get_batch(session, batch_id=batch_id)
    if row is None or not tenancy.is_visible(principal.tenant_scope, row["tenant_id"]):
        raise BatchNotFound(f"recharge batch {batch_id} not found")
    # A staff batch scoped to this tenant may list rows naming another tenant's users: not for tenant eyes.
    return BatchDetail(**{**row, "result": tenancy.redact_batch_result(row["result"], principal.tenant_scope)})


@router.get("/batches/{batch_id}/rows", response_model=Page[BatchRow])
def list_batch_rows(
    batch_id: int,
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
) -> Page[BatchRow]:
    """The rows a batch credited, in file order (the failed ones are in the batch's `result`)."""
    row = batches.get_batch(session, batch_id=batch_id)
    if row is None or not tenancy.is_visible(principal.tenant_scope, row["tenant_id"]):
        raise BatchNotFound(f"recharge batch {batch_id} not found")
    # The cursor names the last row of the page; the next page starts after it (rows go in file order).
    rows = batch_service.batch_rows(session, batch_id=batch_id, after_row=page.before_id, limit=page.limit + 1)
    items = [BatchRow(row=r["row_no"], **{k: v for k, v in r.items() if k != "row_no"}) for r in rows]
    return make_page(items, limit=page.limit, id_of=lambda item: item.row)
