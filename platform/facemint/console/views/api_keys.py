"""The API keys screen: the list (by user or tenant), issuing a key with a scope picker that offers only what the
issuer may hand out (its own scopes within the user's role), the key shown once, and revoking. The same services
and scope checks as /admin/v1/api-keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.auth.scopes import Scope
from facemint.console.forms import id_filter, typed_int, validated
from facemint.console.web import (
    CheckedForm,
    ViewerDep,
    form_text,
    is_htmx,
    next_page_url,
    parse_local,
    redirect,
    render,
)
from facemint.deps import RedisDep, SessionDep, SettingsDep, page_params
from facemint.pagination import PageParams, make_page
from facemint.users import service as user_service

router = APIRouter()


@router.get("/api-keys")
def api_keys_page(
    request: Request,
    session: SessionDep,
    redis: RedisDep,
    viewer: ViewerDep,
    page: Annotated[PageParams, Depends(page_params)],
    user_id: str = "",
    tenant_id: str = "",
    include_revoked: bool = False,
) -> Response:
    viewer.require(Scope.api_keys_read)
    user_filter, tenant_filter = id_filter(user_id), id_filter(tenant_id)
    if tenant_filter is not None:
        viewer.principal.ensure_tenant_visible(tenant_filter, what="tenant")
    rows = key_service.list_keys(
        session,
        tenant_scope=viewer.principal.tenant_scope,
        tenant_id=tenant_filter,
        user_id=user_filter,
        include_revoked=include_revoked,
        before_id=page.before_id,
        limit=page.limit,
    )
    listed = make_page(key_service.to_read(rows, redis=redis), limit=page.limit)
    filters = {
        "user_id": user_filter,
        "tenant_id": tenant_filter,
        "include_revoked": "true" if include_revoked else None,
    }
    next_url = next_page_url(request, "/api-keys", listed.next_cursor, **filters)
    return render(request, viewer, "api_keys/list.html", keys=listed.items, next_url=next_url, filters=filters)


@router.get("/api-keys/new")
def new_key_page(request: Request, session: SessionDep, viewer: ViewerDep, user_id: str = "") -> Response:
    """First the user the key is for, then the picker: that user's role's scopes the viewer holds itself."""
    viewer.require(Scope.api_keys_write)
    chosen = typed_int(user_id)
    user = None
    offered: list[Scope] = []
    if isinstance(chosen, int):
        user = user_service.get(session, user_id=chosen, tenant_scope=viewer.principal.tenant_scope)
        offered = sorted(key_service.issuable_scopes(viewer.principal, user))
    return render(request, viewer, "api_keys/new.html", user=user, offered=offered)


@router.post("/api-keys")
def issue_key(
    request: Request, session: SessionDep, settings: SettingsDep, redis: RedisDep, viewer: ViewerDep, form: CheckedForm
) -> Response:
    """The key is in this answer and nowhere else: the page is not stored (no-store) and the key is never kept."""
    viewer.require(Scope.api_keys_write)
    data = validated(
        ApiKeyCreate,
        {
            "user_id": typed_int(form_text(form, "user_id")),
            "name": form_text(form, "name"),
            "scopes": [value for value in form.getlist("scopes") if isinstance(value, str)],
            "expires_at": parse_local(form_text(form, "expires_at"), viewer.tz),
        },
    )
    api_key, plaintext = key_service.create(session, context=viewer.context, settings=settings, data=data)
    [issued] = key_service.to_read([api_key], redis=redis)
    template = "api_keys/_issued.html" if is_htmx(request) else "api_keys/issued.html"
    return render(request, viewer, template, status=201, key=issued, plaintext=plaintext)


@router.post("/api-keys/{key_id}/revoke")
def revoke_key(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, key_id: int) -> Response:
    viewer.require(Scope.api_keys_write)
    api_key = key_service.get(session, key_id=key_id, tenant_scope=viewer.principal.tenant_scope)
    key_service.revoke(session, context=viewer.context, api_key=api_key)
    return redirect(request, "/api-keys", user_id=api_key.user_id, include_revoked="true")
