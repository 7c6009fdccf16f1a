"""/admin/v1/prices: the price book. Reading is for staff and tenant admins; a change (a new version) is for
operators and platform admins, and applies to jobs submitted after it (each job keeps the version it used)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from billing.pricing import service as pricing
from billing.pricing.schemas import PriceVersion
from facemint.audit import service as audit
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, SettingsDep, request_context, require
from facemint.jobs.schemas import PriceCreate, PriceRead

router = APIRouter(prefix="/admin/v1/prices", tags=["prices"])


def _read(price: PriceVersion) -> PriceRead:
    return PriceRead(
        operation=price.operation,
        version=price.version,
        tokens_per_unit=price.tokens_per_unit,
        actor=price.actor,
        note=price.note,
        created_at=price.created_at,
    )


@router.get("", response_model=list[PriceRead])
def list_prices(
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Scope.prices_read))],
    operation: Annotated[str | None, Query(max_length=100)] = None,
    current: bool = False,
) -> list[PriceRead]:
    """Every version, newest first per operation; `current=true` for the price in force only."""
    prices = pricing.list_prices(session, operation=operation)
    if current:
        prices = [p for i, p in enumerate(prices) if i == 0 or prices[i - 1].operation != p.operation]
    return [_read(p) for p in prices]


@router.post("", response_model=PriceRead, status_code=status.HTTP_201_CREATED)
def set_price(
    body: PriceCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Scope.prices_write))],
) -> PriceRead:
    price = pricing.set_price(
        session, operation=body.operation, tokens_per_unit=body.tokens_per_unit, actor=principal.label, note=body.note
    )
    audit.record(
        session,
        context=request_context(request, principal, settings),
        action="price.set",
        target_type="price",
        target_id=f"{price.operation}@{price.version}",
        tenant_id=None,
        after={"operation": price.operation, "version": price.version, "tokens_per_unit": price.tokens_per_unit},
    )
    return _read(price)
