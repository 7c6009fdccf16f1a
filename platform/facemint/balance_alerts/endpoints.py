"""Low-balance alerts: the caller's own (`/v1/balance/alert`), a user's and a tenant pool's (admin). Reading one
needs what reading the balance needs; setting or removing one needs its own write scope, which moves no tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.balance_alerts import service as alerts
from facemint.balance_alerts.schemas import BalanceAlertRead, BalanceAlertSet
from facemint.deps import SessionDep, SettingsDep, request_context, require

v1_router = APIRouter(prefix="/v1", tags=["account"])
admin_router = APIRouter(prefix="/admin/v1", tags=["balances"])

OwnReader = Annotated[Principal, Depends(require(Scope.balance_read))]
OwnWriter = Annotated[Principal, Depends(require(Scope.balance_alert_write))]
Reader = Annotated[Principal, Depends(require(Scope.balances_read))]
Writer = Annotated[Principal, Depends(require(Scope.balance_alerts_write))]

# --- the caller's own account --------------------------------------------------------------------------------


@v1_router.get("/balance/alert", response_model=BalanceAlertRead)
def get_my_alert(session: SessionDep, principal: OwnReader) -> BalanceAlertRead:
    """The caller's low-balance alert (404 `balance_alert_not_found` when none is set)."""
    return alerts.get(session, target=alerts.own_account(principal))


@v1_router.put("/balance/alert", response_model=BalanceAlertRead)
def set_my_alert(
    body: BalanceAlertSet, request: Request, session: SessionDep, settings: SettingsDep, principal: OwnWriter
) -> BalanceAlertRead:
    """Alert the caller's tenant (its events URL, `balance.low`) once when the caller's available tokens drop below
    `threshold`; again only after they are back at `threshold + hysteresis`."""
    return alerts.set_alert(
        session,
        context=request_context(request, principal, settings),
        target=alerts.own_account(principal),
        data=body,
    )


@v1_router.delete("/balance/alert", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def remove_my_alert(request: Request, session: SessionDep, settings: SettingsDep, principal: OwnWriter) -> None:
    alerts.remove(session, context=request_context(request, principal, settings), target=alerts.own_account(principal))


# --- a user's account ------------------------------------------------------------------------------------------


@admin_router.get("/users/{user_id}/balance/alert", response_model=BalanceAlertRead)
def get_user_alert(user_id: int, session: SessionDep, principal: Reader) -> BalanceAlertRead:
    target = alerts.user_account(session, user_id=user_id, tenant_scope=principal.tenant_scope)
    return alerts.get(session, target=target)


@admin_router.put("/users/{user_id}/balance/alert", response_model=BalanceAlertRead)
def set_user_alert(
    user_id: int,
    body: BalanceAlertSet,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
) -> BalanceAlertRead:
    target = alerts.user_account(session, user_id=user_id, tenant_scope=principal.tenant_scope)
    return alerts.set_alert(session, context=request_context(request, principal, settings), target=target, data=body)


@admin_router.delete("/users/{user_id}/balance/alert", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def remove_user_alert(
    user_id: int, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> None:
    target = alerts.user_account(session, user_id=user_id, tenant_scope=principal.tenant_scope)
    alerts.remove(session, context=request_context(request, principal, settings), target=target)


# --- a tenant's pool --------------------------------------------------------------------------------------------


@admin_router.get("/tenants/{tenant_id}/pool/alert", response_model=BalanceAlertRead)
def get_pool_alert(tenant_id: int, session: SessionDep, principal: Reader) -> BalanceAlertRead:
    target = alerts.pool_account(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return alerts.get(session, target=target)


@admin_router.put("/tenants/{tenant_id}/pool/alert", response_model=BalanceAlertRead)
def set_pool_alert(
    tenant_id: int,
    body: BalanceAlertSet,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
) -> BalanceAlertRead:
    target = alerts.pool_account(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return alerts.set_alert(session, context=request_context(request, principal, settings), target=target, data=body)


@admin_router.delete("/tenants/{tenant_id}/pool/alert", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def remove_pool_alert(
    tenant_id: int, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> None:
    target = alerts.pool_account(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    alerts.remove(session, context=request_context(request, principal, settings), target=target)
