from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from facemint.abuse import freezing
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import RedisDep, SessionDep, SettingsDep, page_params, request_context, require
from facemint.pagination import Page, PageParams, make_page
from facemint.users import service as user_service
from facemint.users.orm import Role, UserStatus
from facemint.users.schemas import UserCreate, UserRead, UserUpdate

router = APIRouter(prefix="/admin/v1/users", tags=["users"])

Reader = Annotated[Principal, Depends(require(Scope.users_read))]
Writer = Annotated[Principal, Depends(require(Scope.users_write))]


@router.post("", response_model=UserRead, status_code=status.HTTP_201_CREATED)
def create_user(
    body: UserCreate, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> UserRead:
    user = user_service.create(session, context=request_context(request, principal, settings), data=body)
    return UserRead.model_validate(user)


@router.get("", response_model=Page[UserRead])
def list_users(
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    tenant_id: int | None = None,
    role: Role | None = None,
    status: UserStatus | None = None,
    email: Annotated[
        str | None, Query(max_length=320, description="substring match (a scan: prefer email_prefix)")
    ] = None,
    email_prefix: Annotated[
        str | None, Query(max_length=320, description="emails starting with this (index-backed search)")
    ] = None,
    user_id: Annotated[int | None, Query(gt=0, lt=2**63, description="exactly this user")] = None,
    label: Annotated[str | None, Query(max_length=32, description="users carrying this label")] = None,
) -> Page[UserRead]:
    if tenant_id is not None:
        principal.ensure_tenant_visible(tenant_id, what="tenant")
    users = user_service.list_users(
        session,
        tenant_scope=principal.tenant_scope,
        tenant_id=tenant_id,
        role=role,
        status=status,
        email_contains=email,
        email_prefix=email_prefix,
        user_id=user_id,
        label=label,
        before_id=page.before_id,
        limit=page.limit,
    )
    items = [UserRead.model_validate(u) for u in users]
    return make_page(items, limit=page.limit)


@router.get("/{user_id}", response_model=UserRead)
def get_user(user_id: int, session: SessionDep, principal: Reader) -> UserRead:
    return UserRead.model_validate(user_service.get(session, user_id=user_id, tenant_scope=principal.tenant_scope))


@router.patch("/{user_id}", response_model=UserRead)
def update_user(
    user_id: int,
    body: UserUpdate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
) -> UserRead:
    user = user_service.get(session, user_id=user_id, tenant_scope=principal.tenant_scope)
    user = user_service.update(session, context=request_context(request, principal, settings), user=user, data=body)
    return UserRead.model_validate(user)


def _set_status(
    user_id: int, status: UserStatus, request: Request, session: SessionDep, settings: SettingsDep, principal: Principal
) -> UserRead:
    user = user_service.get(session, user_id=user_id, tenant_scope=principal.tenant_scope)
    user = user_service.set_status(
        session, context=request_context(request, principal, settings), user=user, status=status
    )
    return UserRead.model_validate(user)


@router.post("/{user_id}/freeze", response_model=UserRead)
def freeze_user(
    user_id: int, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> UserRead:
    return _set_status(user_id, UserStatus.frozen, request, session, settings, principal)


@router.post("/{user_id}/unfreeze", response_model=UserRead)
def unfreeze_user(
    user_id: int, request: Request, session: SessionDep, settings: SettingsDep, redis: RedisDep, principal: Writer
) -> UserRead:
    """Unfreeze a user (however it was frozen); its abuse counters start afresh, as when a trigger is resolved
    with an unfreeze."""
    user = user_service.get(session, user_id=user_id, tenant_scope=principal.tenant_scope)
    freezing.unfreeze_user(session, context=request_context(request, principal, settings), redis=redis, user=user)
    return UserRead.model_validate(user)


@router.post("/{user_id}/revoke-sessions", response_model=UserRead)
def revoke_user_sessions(
    user_id: int, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> UserRead:
    """Every access token the user holds stops working (its API keys do not: revoke those one by one)."""
    user = user_service.get(session, user_id=user_id, tenant_scope=principal.tenant_scope)
    user = user_service.revoke_sessions(session, context=request_context(request, principal, settings), user=user)
    return UserRead.model_validate(user)
