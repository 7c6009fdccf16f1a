"""/admin/v1/prices: the price book. Reading is for staff and tenant admins; a change (a new version) is for
operators and platform admins, and applies to jobs submitted after it (each job keeps the version it used)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from billing.pricing.schemas import PriceVersion
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, SettingsDep, request_context, require
from facemint.jobs.schemas import PriceCreate, PriceRead
from facemint.prices import service as prices

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
    versions = prices.list_prices(session, operation=operation)
    if current:
        versions = [p for i, p in enumerate(versions) if i == 0 or versions[i - 1].operation != p.operation]
    return [_read(p) for p in versions]


@router.post("", response_model=PriceRead, status_code=status.HTTP_201_CREATED)
def set_price(
    body: PriceCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Scope.prices_write))],
) -> PriceRead:
    price = prices.set_price(
        session,
        context=request_context(request, principal, settings),
        operation=body.operation,
        tokens_per_unit=body.tokens_per_unit,
        note=body.note,
    )
    return _read(price)
