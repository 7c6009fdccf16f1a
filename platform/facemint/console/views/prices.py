"""The prices screen: the versioned price book (every version, the one in force marked), and a new version in
two steps: the form's preview shows the price in force beside the new one and changes nothing; confirming posts
the same service as POST /admin/v1/prices (`prices:write`: operators and platform admins), audited the same
way. The confirmation names the version it was shown: if another change landed in between, it is refused (409
`price_changed`) rather than applied on top of a price the viewer never saw."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from billing.pricing import service as pricing
from facemint.auth.scopes import Scope
from facemint.console.forms import validated
from facemint.console.web import CheckedForm, ViewerDep, form_text, redirect, render
from facemint.deps import SessionDep
from facemint.errors import Unprocessable
from facemint.jobs.schemas import PriceCreate
from facemint.prices import service as prices

router = APIRouter()


def _proposal(form: CheckedForm) -> PriceCreate:
    tokens = form_text(form, "tokens_per_unit")
    return validated(
        PriceCreate,
        {
            "operation": form_text(form, "operation"),
            "tokens_per_unit": int(tokens) if tokens.isdigit() and len(tokens) < 19 else tokens,
            "note": form_text(form, "note") or None,
        },
    )


@router.get("/prices")
def prices_page(request: Request, session: SessionDep, viewer: ViewerDep, operation: str = "") -> Response:
    viewer.require(Scope.prices_read)
    versions = prices.list_prices(session, operation=operation.strip()[:100] or None)
    in_force = {p.operation: p for p in reversed(versions)}  # newest first per operation: the first one wins
    return render(
        request,
        viewer,
        "prices/list.html",
        versions=versions,
        in_force=in_force,
        operation=operation.strip()[:100],
        operations=sorted(in_force),
        set_version=request.query_params.get("set", "")[:120],
    )


@router.post("/prices/preview")
def preview_price(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm) -> Response:
    """The confirmation step: nothing is written."""
    viewer.require(Scope.prices_write)
    proposal = _proposal(form)
    current = pricing.current_price(session, operation=proposal.operation)
    return render(request, viewer, "prices/preview.html", proposal=proposal, current=current)


@router.post("/prices")
def confirm_price(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm) -> Response:
    viewer.require(Scope.prices_write)
    proposal = _proposal(form)
    expected = form_text(form, "expected_version")
    if not expected.isdigit() or len(expected) > 9:
        raise Unprocessable("confirm a new price from its preview (expected_version is missing)")
    price = prices.set_price(
        session,
        context=viewer.context,
        operation=proposal.operation,
        tokens_per_unit=proposal.tokens_per_unit,
        note=proposal.note,
        expected_version=int(expected),
    )
    return redirect(request, "/prices", set=f"{price.operation}@{price.version}")
