"""The users screen: search (an email prefix or an exact id, role, status, tenant), creating a user, and a user's
page (balance, role, freeze and unfreeze, a new password, signing it out everywhere, its keys). Every action calls
the service the /admin/v1/users route calls, with the same scope checks; the roles a form offers are those the
service would let the viewer give."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from billing.ledger import service as ledger
from facemint.api_keys import service as key_service
from facemint.auth.scopes import Scope
from facemint.console.forms import enum_filter, id_filter, typed_int, validated
from facemint.console.web import CheckedForm, ViewerDep, form_text, next_page_url, redirect, render
from facemint.deps import RedisDep, SessionDep, page_params
from facemint.errors import Forbidden, Unprocessable
from facemint.pagination import PageParams, make_page
from facemint.tenants import service as tenant_service
from facemint.users import service as user_service
from facemint.users.orm import STAFF_ROLES, Role, User, UserStatus
from facemint.users.schemas import UserCreate, UserUpdate

router = APIRouter()
USER_KEYS_SHOWN = 20


@router.get("/users")
def users_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    page: Annotated[PageParams, Depends(page_params)],
    q: str = "",
    role: str = "",
    status: str = "",
    tenant_id: str = "",
) -> Response:
    """`q` is an exact user id (digits) or the start of an email: both served by an index, unlike a substring."""
    viewer.require(Scope.users_read)
    q = q.strip()[:320]
    tenant_filter = id_filter(tenant_id)
    if tenant_filter is not None:
        viewer.principal.ensure_tenant_visible(tenant_filter, what="tenant")
    by_id = int(q) if q.isdigit() and len(q) < 19 else None
    role_filter, status_filter = enum_filter(role, Role), enum_filter(status, UserStatus)
    rows = user_service.list_users(
        session,
        tenant_scope=viewer.principal.tenant_scope,
        tenant_id=tenant_filter,
        role=role_filter,
        status=status_filter,
        email_contains=None,
        email_prefix=None if by_id is not None else q or None,
        user_id=by_id,
        before_id=page.before_id,
        limit=page.limit,
    )
    listed = make_page(rows, limit=page.limit)
    filters = {"q": q, "role": role_filter, "status": status_filter, "tenant_id": tenant_filter}
    return render(
        request,
        viewer,
        "users/list.html",
        users=listed.items,
        next_url=next_page_url(request, "/users", listed.next_cursor, **filters),
        filters=filters,
        roles=list(Role),
        statuses=list(UserStatus),
    )


@router.get("/users/new")
def new_user_page(request: Request, session: SessionDep, viewer: ViewerDep, tenant_id: str = "") -> Response:
    viewer.require(Scope.users_write)
    tenant = None
    preset = typed_int(tenant_id)
    if isinstance(preset, int):
        tenant = tenant_service.get(session, tenant_id=preset, tenant_scope=viewer.principal.tenant_scope)
    elif not viewer.principal.is_staff:
        tenant = tenant_service.get(
            session, tenant_id=viewer.principal.tenant_id or 0, tenant_scope=viewer.principal.tenant_scope
        )
    return render(
        request, viewer, "users/new.html", roles=user_service.assignable_roles(viewer.principal), tenant=tenant
    )


@router.post("/users")
def create_user(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm) -> Response:
    viewer.require(Scope.users_write)
    role = form_text(form, "role") or Role.member.value
    data = validated(
        UserCreate,
        {
            "email": form_text(form, "email"),
            "name": form_text(form, "name") or None,
            "role": role,
            # Staff belong to no tenant: a tenant typed in beside a staff role is dropped, not refused.
            "tenant_id": None if role in STAFF_ROLES else typed_int(form_text(form, "tenant_id")),
            "password": form.get("password") or None,
        },
    )
    user = user_service.create(session, context=viewer.context, data=data)
    return redirect(request, f"/users/{user.id}", created="1")


@router.get("/users/{user_id}")
def user_page(
    request: Request, session: SessionDep, redis: RedisDep, viewer: ViewerDep, user_id: int, created: bool = False
) -> Response:
    viewer.require(Scope.users_read)
    user = user_service.get(session, user_id=user_id, tenant_scope=viewer.principal.tenant_scope)
    balance = ledger.get_balance(session, account_id=user.account_id) if viewer.can(Scope.balances_read) else None
    keys = []
    if viewer.can(Scope.api_keys_read):
        rows = key_service.list_keys(
            session,
            tenant_scope=viewer.principal.tenant_scope,
            tenant_id=None,
            user_id=user.id,
            include_revoked=False,
            before_id=None,
            limit=USER_KEYS_SHOWN,
        )
        keys = key_service.to_read(rows[:USER_KEYS_SHOWN], redis=redis)
    return render(
        request,
        viewer,
        "users/detail.html",
        user=user,
        balance=balance,
        keys=keys,
        roles=_roles_for(viewer, user),
        is_self=user.id == viewer.principal.user_id,
        manageable=viewer.can(Scope.users_write) and _manageable(viewer, user),
        created=created,
    )


def _roles_for(viewer: ViewerDep, user: User) -> list[Role]:
    """The roles the role form offers for `user`: those the viewer may give, on the user's side of the line between
    platform staff and tenants (nobody moves across it)."""
    staff = user.role in STAFF_ROLES
    return [role for role in user_service.assignable_roles(viewer.principal) if (role in STAFF_ROLES) == staff]


def _manageable(viewer: ViewerDep, user: User) -> bool:
    """Whether the service would let the viewer change this user at all (controls it would refuse are not drawn)."""
    try:
        user_service.ensure_can_manage(viewer.principal, user)
    except Forbidden:
        return False
    return True


def _load(session: SessionDep, viewer: ViewerDep, user_id: int) -> User:
    viewer.require(Scope.users_write)
    return user_service.get(session, user_id=user_id, tenant_scope=viewer.principal.tenant_scope)


@router.post("/users/{user_id}/role")
def change_role(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, user_id: int) -> Response:
    user = _load(session, viewer, user_id)
    data = validated(UserUpdate, {"role": form_text(form, "role")})
    user_service.update(session, context=viewer.context, user=user, data=data)
    return redirect(request, f"/users/{user_id}")


@router.post("/users/{user_id}/password")
def reset_password(
    request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, user_id: int
) -> Response:
    """PATCH /admin/v1/users/{id} with a password: the user's sessions end with it."""
    user = _load(session, viewer, user_id)
    password = form.get("password")
    if not isinstance(password, str) or password != form.get("password_confirm"):
        raise Unprocessable("the two passwords differ")
    user_service.update(session, context=viewer.context, user=user, data=validated(UserUpdate, {"password": password}))
    return redirect(request, f"/users/{user_id}")


@router.post("/users/{user_id}/freeze")
def freeze(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, user_id: int) -> Response:
    user = _load(session, viewer, user_id)
    user_service.set_status(session, context=viewer.context, user=user, status=UserStatus.frozen)
    return redirect(request, f"/users/{user_id}")


@router.post("/users/{user_id}/unfreeze")
def unfreeze(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, user_id: int) -> Response:
    user = _load(session, viewer, user_id)
    user_service.set_status(session, context=viewer.context, user=user, status=UserStatus.active)
    return redirect(request, f"/users/{user_id}")


@router.post("/users/{user_id}/revoke-sessions")
def revoke_sessions(
    request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm, user_id: int
) -> Response:
    user = _load(session, viewer, user_id)
    user_service.revoke_sessions(session, context=viewer.context, user=user)
    return redirect(request, f"/users/{user_id}")
