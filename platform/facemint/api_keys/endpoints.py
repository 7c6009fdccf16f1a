from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import RedisDep, SessionDep, SettingsDep, page_params, request_context, require
from facemint.pagination import Page, PageParams, make_page

router = APIRouter(prefix="/admin/v1/api-keys", tags=["api-keys"])

Reader = Annotated[Principal, Depends(require(Scope.api_keys_read))]
Writer = Annotated[Principal, Depends(require(Scope.api_keys_write))]


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_api_key(
    body: ApiKeyCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    principal: Writer,
) -> ApiKeyCreated:
    api_key, plaintext = key_service.create(
        session, context=request_context(request, principal, settings), settings=settings, data=body
    )
    [read] = key_service.to_read([api_key], redis=redis)
    return ApiKeyCreated(**read.model_dump(), key=plaintext)


@router.get("", response_model=Page[ApiKeyRead])
def list_api_keys(
    session: SessionDep,
    redis: RedisDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    tenant_id: int | None = None,
    user_id: int | None = None,
    include_revoked: bool = False,
) -> Page[ApiKeyRead]:
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    rows = key_service.list_keys(
        session,
        tenant_scope=principal.tenant_scope,
        tenant_id=tenant_id,
        user_id=user_id,
        include_revoked=include_revoked,
        before_id=page.before_id,
        limit=page.limit,
    )
    items = key_service.to_read(rows, redis=redis)
    return make_page(items, limit=page.limit)


@router.get("/{key_id}", response_model=ApiKeyRead)
def get_api_key(key_id: int, session: SessionDep, redis: RedisDep, principal: Reader) -> ApiKeyRead:
    api_key = key_service.get(session, key_id=key_id, tenant_scope=principal.tenant_scope)
    return key_service.to_read([api_key], redis=redis)[0]


@router.delete("/{key_id}", response_model=ApiKeyRead)
def revoke_api_key(
    key_id: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    principal: Writer,
) -> ApiKeyRead:
    api_key = key_service.get(session, key_id=key_id, tenant_scope=principal.tenant_scope)
    api_key = key_service.revoke(session, context=request_context(request, principal, settings), api_key=api_key)
    return key_service.to_read([api_key], redis=redis)[0]
