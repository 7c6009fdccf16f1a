from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import JSONResponse

from billing.ledger import service as ledger
from billing.ledger.schemas import Posting
from facemint.approvals import service as approvals
from facemint.approvals.endpoints import HELD_RESPONSES, held_response
from facemint.approvals.service import Held
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.balances import service as balance_service
from facemint.balances.errors import AdjustmentAboveCeiling
from facemint.balances.schemas import (
    AccountBalanceRead,
    AdjustmentCreate,
    BalanceRead,
    LedgerEntryRead,
    PostingRead,
    ReversalCreate,
)
from facemint.deps import IdempotencyKey, SessionDep, SettingsDep, page_params, request_context, require
from facemint.pagination import Page, PageParams, make_page
from facemint.tenants import service as tenant_service

v1_router = APIRouter(prefix="/v1", tags=["account"])
admin_router = APIRouter(prefix="/admin/v1", tags=["balances"])


@v1_router.get("/balance", response_model=BalanceRead)
def get_my_balance(
    session: SessionDep, principal: Annotated[Principal, Depends(require(Scope.balance_read))]
) -> BalanceRead:
    return balance_service.balance_read(session, account_id=principal.account_id)


@v1_router.get("/ledger", response_model=Page[LedgerEntryRead])
def list_my_entries(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Scope.ledger_read))],
    page: Annotated[PageParams, Depends(page_params)],
) -> Page[LedgerEntryRead]:
    rows = ledger.list_entries(session, account_id=principal.account_id, before_id=page.before_id, limit=page.limit + 1)
    items = [
        LedgerEntryRead(
            id=r["id"],
            transaction_id=r["transaction_id"],
            kind=r["kind"],
            amount=r["amount"],
            balance_after=r["balance_after"],
            reason=r["reason"],
            reference=r["reference"] or r["transaction_reference"],
            created_at=r["created_at"],
        )
        for r in rows
    ]
    return make_page(items, limit=page.limit)


@admin_router.get("/balances", response_model=Page[AccountBalanceRead])
def list_balances(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Scope.balances_read))],
    page: Annotated[PageParams, Depends(page_params)],
    tenant_id: int | None = None,
    user_id: int | None = None,
) -> Page[AccountBalanceRead]:
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    items = balance_service.list_user_balances(
        session,
        tenant_scope=principal.tenant_scope,
        tenant_id=tenant_id,
        user_id=user_id,
        before_id=page.before_id,
        limit=page.limit,
    )
    return make_page(items, limit=page.limit, id_of=lambda item: item.user_id)


@admin_router.get("/tenants/{tenant_id}/pool", response_model=AccountBalanceRead)
def get_pool_balance(
    tenant_id: int,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Scope.balances_read))],
) -> AccountBalanceRead:
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return balance_service.pool_balance(session, account_id=tenant.pool_account_id, tenant_id=tenant.id)


def _posting_read(posting: Posting | Held, response: Response) -> PostingRead | JSONResponse:
    if isinstance(posting, Held):
        return held_response(posting)
    if posting.replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return PostingRead(
        transaction_id=posting.transaction_id,
        kind=posting.kind,
        amount=posting.amount,
        replayed=posting.replayed,
        created_at=posting.created_at,
    )


@admin_router.post(
    "/adjustments", response_model=PostingRead, status_code=status.HTTP_201_CREATED, responses=HELD_RESPONSES
)
def create_adjustment(
    body: AdjustmentCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Scope.ledger_adjust))],
    idempotency_key: IdempotencyKey,
) -> PostingRead | JSONResponse:
    if abs(body.amount) > settings.recharge_max_amount:
        # The same ceiling as a recharge: one correction never mints (or burns) more than one recharge could.
        raise AdjustmentAboveCeiling(
            f"an adjustment moves at most {settings.recharge_max_amount} tokens",
            max_amount=settings.recharge_max_amount,
        )
    posting = balance_service.adjust(
        session,
        context=request_context(request, principal, settings),
        data=body,
        idempotency_key=idempotency_key,
        policy=approvals.Policy.from_settings(settings),
    )
    return _posting_read(posting, response)


@admin_router.post(
    "/transactions/{transaction_id}/reversal",
    response_model=PostingRead,
    status_code=status.HTTP_201_CREATED,
    responses=HELD_RESPONSES,
)
def create_reversal(
    transaction_id: int,
    body: ReversalCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Scope.ledger_adjust))],
    idempotency_key: IdempotencyKey,
) -> PostingRead | JSONResponse:
    posting = balance_service.reverse(
        session,
        context=request_context(request, principal, settings),
        transaction_id=transaction_id,
        data=body,
        idempotency_key=idempotency_key,
        policy=approvals.Policy.from_settings(settings),
    )
    return _posting_read(posting, response)
