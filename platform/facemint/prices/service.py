"""Changing the price book: a new version of an operation's price, with its audit event, in the caller's
transaction (the API's POST /admin/v1/prices and the console's confirmed form call this)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from billing.pricing import service as pricing
from billing.pricing.schemas import PriceVersion
from facemint.audit import service as audit
from facemint.context import RequestContext
from facemint.prices.errors import PriceChanged


def set_price(
    session: Session,
    *,
    context: RequestContext,
    operation: str,
    tokens_per_unit: int,
    note: str | None,
    expected_version: int | None = None,
) -> PriceVersion:
    """The next version of `operation`'s price. `expected_version` (the console's confirmation step): refuse with
    409 `price_changed` unless the version in force is still the one the confirmation showed."""
    before = pricing.current_price(session, operation=operation)
    if expected_version is not None and before.version != expected_version:
        raise PriceChanged(
            f"{operation} is at version {before.version} now, not {expected_version}: review the change again"
        )
    price = pricing.set_price(
        session, operation=operation, tokens_per_unit=tokens_per_unit, actor=context.principal.label, note=note
    )
    audit.record(
        session,
        context=context,
        action="price.set",
        target_type="price",
        target_id=f"{price.operation}@{price.version}",
        tenant_id=None,
        before={"operation": before.operation, "version": before.version, "tokens_per_unit": before.tokens_per_unit},
        after={"operation": price.operation, "version": price.version, "tokens_per_unit": price.tokens_per_unit},
    )
    return price


def list_prices(session: Session, *, operation: str | None = None) -> list[PriceVersion]:
    """Every version, newest first within each operation."""
    return pricing.list_prices(session, operation=operation)
