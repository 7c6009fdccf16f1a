"""The audit screen: every event, newest first, with the API's filters (tenant, actor, action, target type and
id) and a time range typed in the viewer's zone; each event shows its actor, target and a before/after diff per
key. The same service and scope as GET /admin/v1/audit-events (`audit:read`): a tenant admin sees its own
tenant's events only, with what the API hides from it hidden here too (`audit_service.read`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from facemint.audit import service as audit_service
from facemint.auth.scopes import Scope
from facemint.console.forms import positive_id
from facemint.console.web import ViewerDep, next_page_url, parse_local, render
from facemint.deps import SessionDep, page_params
from facemint.pagination import PageParams, make_page

router = APIRouter()
FILTER_NAMES = ("tenant_id", "actor_user_id", "action", "target_type", "target_id", "from", "to")


@dataclass(frozen=True, slots=True)
class DiffLine:
    key: str
    before: str | None  # None: the key is absent on that side
    after: str | None

    @property
    def change(self) -> str:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "changed" if self.before != self.after else "same"


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[DiffLine]:
    """One line per key of either side, in the order the keys first appear."""
    before, after = before or {}, after or {}
    keys = list(dict.fromkeys([*before, *after]))
    return [
        DiffLine(
            key=key,
            before=_shown(before[key]) if key in before else None,
            after=_shown(after[key]) if key in after else None,
        )
        for key in keys
    ]


@router.get("/audit")
def audit_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    page: Annotated[PageParams, Depends(page_params)],
) -> Response:
    viewer.require(Scope.audit_read)
    params = {name: request.query_params.get(name, "").strip()[:100] for name in FILTER_NAMES}
    tenant_id = positive_id(params["tenant_id"], "tenant_id")
    if tenant_id is not None:
        viewer.principal.ensure_tenant_visible(tenant_id, what="tenant")
    scope = viewer.principal.tenant_scope
    events = audit_service.list_events(
        session,
        tenant_scope=scope,
        tenant_id=tenant_id,
        action=params["action"] or None,
        actor_user_id=positive_id(params["actor_user_id"], "actor_user_id"),
        target_type=params["target_type"] or None,
        target_id=params["target_id"] or None,
        before_id=page.before_id,
        limit=page.limit,
        start=parse_local(params["from"], viewer.tz),
        end=parse_local(params["to"], viewer.tz),
    )
    listed = make_page([audit_service.read(e, tenant_scope=scope) for e in events], limit=page.limit)
    return render(
        request,
        viewer,
        "audit/list.html",
        events=[(event, diff(event.before, event.after)) for event in listed.items],
        next_url=next_page_url(request, "/audit", listed.next_cursor, **params),
        filters=params,
    )
