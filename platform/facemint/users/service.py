from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind
from facemint import tenancy
from facemint.audit import service as audit
from facemint.auth.passwords import hash_password
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope, scopes_for_role
from facemint.context import RequestContext
from facemint.errors import Conflict, Forbidden, Unprocessable
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant
from facemint.tenants.errors import TenantNotFound
from facemint.tenants.orm import Tenant
from facemint.users.errors import EmailTaken, PlatformAdminOnly, PrivilegeNotHeld, UserNotFound
from facemint.users.orm import STAFF_ROLES, Role, User, UserStatus
from facemint.users.schemas import UserCreate, UserUpdate

_TENANT_ADMIN_ASSIGNABLE = frozenset({Role.tenant_admin, Role.member})
# Operators move money and approve each other's large recharges; finance reads every tenant's books. Only a
# platform admin makes such an account or gives it privilege, or one operator could mint a second one to approve
# its own four-eyes requests.
_GRANTED_BY_PLATFORM_ADMINS_ONLY = frozenset({Role.operator, Role.finance})


def snapshot(user: User) -> dict[str, object]:
    return {
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "status": user.status,
        "tenant_id": user.tenant_id,
        "labels": list(user.labels or []),
    }


def _check_role_assignment(principal: Principal | None, role: Role) -> None:
    if principal is None or principal.role is Role.platform_admin:
        return
    if principal.role is Role.operator and role is not Role.platform_admin:
        return
    if principal.role is Role.tenant_admin and role in _TENANT_ADMIN_ASSIGNABLE:
        return
    raise Forbidden(f"a {principal.role.value} cannot assign the {role.value} role")


def ensure_can_manage(principal: Principal | None, user: User) -> None:
    """Who may change an existing user, reset its password, freeze it, or issue and revoke its keys: a platform
    admin anyone; an operator anyone but platform admins; a tenant admin its members and itself. Otherwise an
    operator could take over a platform admin, or a tenant admin impersonate a peer. What hands privilege out (a
    role, a password, an unfreeze, a key) must also pass `ensure_can_grant`."""
    if principal is None or principal.role is Role.platform_admin or principal.user_id == user.id:
        return
    if principal.role is Role.operator and user.role != Role.platform_admin.value:
        return
    if principal.role is Role.tenant_admin and user.role == Role.member.value:
        return
    raise Forbidden(f"a {principal.role.value} cannot manage a {user.role}")


def ensure_can_grant(principal: Principal | None, *, target: User | None, role: Role, scopes: frozenset[Scope]) -> None:
    """Whatever hands a user privilege (creating it with a role, a new role, a password, an unfreeze, an API key)
    needs the caller to hold every scope that results: its own scopes, a key's for a key. Otherwise a narrow key
    could make a wider user, sign in as it and hold the whole role. `role` is the user's role afterwards.

    Operator and finance accounts get privilege from platform admins only; a staff member still sets its own
    password and issues its own keys (within its scopes: nothing grows)."""
    if principal is None:  # the command line, run by whoever holds the server
        return
    is_self = target is not None and target.id == principal.user_id
    staff_account = role in _GRANTED_BY_PLATFORM_ADMINS_ONLY or (
        target is not None and target.role in _GRANTED_BY_PLATFORM_ADMINS_ONLY
    )
    if staff_account and principal.role is not Role.platform_admin and not is_self:
        raise PlatformAdminOnly("only a platform admin creates operator or finance accounts or gives them privilege")
    missing = sorted(s.value for s in scopes - principal.scopes)
    if missing:
        raise PrivilegeNotHeld(f"this would grant scopes you do not hold: {', '.join(missing)}", missing=missing)


def assignable_roles(principal: Principal) -> list[Role]:
    """The roles `principal` may give a new user (creating it) or an existing one: what `create` and `update`
    would let through, for forms that offer only those."""
    allowed = []
    for role in Role:
        try:
            _check_role_assignment(principal, role)
            ensure_can_grant(principal, target=None, role=role, scopes=scopes_for_role(role))
        except Forbidden:
            continue
        allowed.append(role)
    return allowed


def _end_sessions(user: User) -> None:
    """Access tokens carry the credentials version they were issued under; moving it on (in SQL, so concurrent
    changes never land on the same version) makes every earlier token fail on its next request."""
    user.credentials_version = User.credentials_version + 1


def end_tenant_sessions(session: Session, *, tenant_id: int) -> None:
    """`_end_sessions` for every user of a tenant (its suspension or reactivation), in one statement."""
    session.execute(
        sa.update(User)
        .where(*tenancy.tenant_conditions(User.tenant_id, tenant_scope=None, tenant_id=tenant_id))
        .values(credentials_version=User.credentials_version + 1)
        .execution_options(synchronize_session=False)
    )


def create(
    session: Session, *, context: RequestContext | None, data: UserCreate, password_hash: str | None = None
) -> User:
    principal = context.principal if context else None
    _check_role_assignment(principal, data.role)
    ensure_can_grant(principal, target=None, role=data.role, scopes=scopes_for_role(data.role))
    tenant_id = data.tenant_id
    if principal is not None and not principal.is_staff:
        tenant_id = tenancy.acting_tenant(
            principal.tenant_scope, tenant_id, not_found=TenantNotFound(f"tenant {tenant_id} not found")
        )
    if data.role in STAFF_ROLES:
        if tenant_id is not None:
            raise Unprocessable("platform staff (platform_admin, operator, finance) belong to no tenant")
    else:
        if tenant_id is None:
            raise Unprocessable(f"a {data.role.value} needs a tenant_id")
        if session.get(Tenant, tenant_id) is None:
            raise TenantNotFound(f"tenant {tenant_id} not found")
    if session.scalar(select(User.id).where(User.email == data.email)) is not None:
        raise EmailTaken("a user with this email already exists")
    user = User(
        tenant_id=tenant_id,
        email=data.email,
        name=data.name,
        role=data.role.value,
        status=UserStatus.active.value,
        password_hash=password_hash or (hash_password(data.password) if data.password else None),
        account_id=ledger.open_account(session, kind=AccountKind.user, tenant_id=tenant_id),
        labels=sorted(set(data.labels)),
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same email won the race
        if "uq_users_email" in str(exc.orig):
            raise EmailTaken("a user with this email already exists") from exc
        raise
    audit.record(
        session,
        context=context,
        action="user.create",
        target_type="user",
        target_id=user.id,
        tenant_id=tenant_id,
        after=snapshot(user),
    )
    return user


def get(session: Session, *, user_id: int, tenant_scope: int | None) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound(f"user {user_id} not found")
    tenancy.ensure_visible(tenant_scope, user.tenant_id, not_found=UserNotFound(f"user {user_id} not found"))
    return user


def get_by_email(session: Session, *, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email.strip().lower()))


def list_users(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    role: str | None,
    status: str | None,
    email_contains: str | None,
    before_id: int | None,
    limit: int,
    email_prefix: str | None = None,
    user_id: int | None = None,
    label: str | None = None,
) -> list[User]:
    """Newest first. `email_prefix` is the search that stays fast over many users (a `LIKE 'prefix%'` the
    `text_pattern_ops` index on email serves); `email_contains` scans."""
    query = within_tenant(select(User), User.tenant_id, tenant_scope=tenant_scope, tenant_id=tenant_id)
    if user_id is not None:
        query = query.where(User.id == user_id)
    if label:
        query = query.where(User.labels.contains([label.strip().lower()]))
    if email_prefix:
        query = query.where(User.email.startswith(email_prefix.strip().lower(), autoescape=True))
    if role:
        query = query.where(User.role == role)
    if status:
        query = query.where(User.status == status)
    if email_contains:
        query = query.where(User.email.contains(email_contains.lower(), autoescape=True))
    query = newest_first(query, User.id, before_id=before_id, limit=limit)
    return list(session.scalars(query))


def update(session: Session, *, context: RequestContext | None, user: User, data: UserUpdate) -> User:
    principal = context.principal if context else None
    ensure_can_manage(principal, user)
    if data.password is not None and principal is not None and principal.api_key_id and principal.user_id == user.id:
        # Otherwise a narrowly scoped key could set its user's password, log in, and hold the whole role.
        raise Forbidden("an API key cannot change its own user's password; sign in with the password instead")
    before = snapshot(user)
    role_changes = data.role is not None and data.role.value != user.role
    if data.role is not None and role_changes:
        if principal is not None and principal.user_id == user.id:
            raise Forbidden("you cannot change your own role")
        _check_role_assignment(principal, data.role)
        if (data.role in STAFF_ROLES) != (user.role in STAFF_ROLES):
            raise Unprocessable("a user cannot move between platform staff and a tenant")
    if role_changes or data.password is not None:
        # A new role or a password (anyone who knows it holds the whole role) grants the role's scopes. A new
        # name grants nothing and stays open to whoever manages the user.
        role = data.role or Role(user.role)
        ensure_can_grant(principal, target=user, role=role, scopes=scopes_for_role(role))
        user.role = role.value
        if data.password is not None:
            user.password_hash = hash_password(data.password)
        _end_sessions(user)
    if data.name is not None:
        user.name = data.name
    if data.labels is not None:
        # Labels grant nothing but what a tenant's grants select on: open to whoever manages the user.
        user.labels = sorted(set(data.labels))
    session.flush()
    after = snapshot(user)
    if after != before or data.password is not None:
        audit.record(
            session,
            context=context,
            action="user.update",
            target_type="user",
            target_id=user.id,
            tenant_id=user.tenant_id,
            before=before,
            after={**after, "password_changed": data.password is not None},
        )
    return user


def set_status(session: Session, *, context: RequestContext, user: User, status: UserStatus) -> User:
    if context.principal.user_id == user.id:
        raise Forbidden("you cannot freeze or unfreeze yourself")
    ensure_can_manage(context.principal, user)
    if status is UserStatus.active:
        # Unfreezing hands the user's role back; freezing only takes away, so it stays open to whoever manages
        # the user (an operator may freeze another operator, not unfreeze it).
        ensure_can_grant(context.principal, target=user, role=Role(user.role), scopes=scopes_for_role(user.role))
    before = snapshot(user)
    if user.status != status.value:
        user.status = status.value
        _end_sessions(user)
        session.flush()
        audit.record(
            session,
            context=context,
            action="user.freeze" if status is UserStatus.frozen else "user.unfreeze",
            target_type="user",
            target_id=user.id,
            tenant_id=user.tenant_id,
            before=before,
            after=snapshot(user),
        )
    return user


def freeze_by_rule(session: Session, *, user_id: int, reason: dict[str, object]) -> bool:
    """Freeze an active user because an abuse rule said so (`facemint.abuse.freezing`): no person acts, so the
    audit event has no actor and `reason` names the rules. Its sessions end, as with any freeze. False when the
    user was not active (already frozen: nothing changes)."""
    tenant_id = session.execute(
        sa.update(User)
        .where(User.id == user_id, User.status == UserStatus.active.value)
        .values(status=UserStatus.frozen.value, credentials_version=User.credentials_version + 1)
        .returning(User.tenant_id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if tenant_id is None:
        return False
    audit.record(
        session,
        context=None,
        action="user.freeze",
        target_type="user",
        target_id=user_id,
        tenant_id=tenant_id[0],
        before={"status": UserStatus.active.value},
        after={"status": UserStatus.frozen.value, **reason},
    )
    return True


def bootstrap_admin(session: Session, *, email: str, password: str) -> tuple[User, bool]:
    """Create or update a platform admin from the command line. Idempotent: returns (user, created)."""
    existing = get_by_email(session, email=email)
    if existing is None:
        user = create(
            session,
            context=None,
            data=UserCreate(email=email, role=Role.platform_admin, password=password),
        )
        return user, True
    if existing.role != Role.platform_admin.value:
        raise Conflict(f"{email} exists with role {existing.role}; refusing to promote it silently")
    existing.password_hash = hash_password(password)
    existing.status = UserStatus.active.value
    _end_sessions(existing)
    session.flush()
    audit.record(
        session,
        context=None,
        action="user.bootstrap",
        target_type="user",
        target_id=existing.id,
        tenant_id=None,
        after=snapshot(existing),
    )
    return existing, False


def bootstrap_password(session: Session, *, user: User, password: str) -> None:
    """Reset a password from the command line (demo seeding)."""
    user.password_hash = hash_password(password)
    _end_sessions(user)
    session.flush()


def revoke_sessions(session: Session, *, context: RequestContext, user: User) -> User:
    """Sign a user out everywhere: every access token issued so far fails on its next request. API keys are
    separate credentials, revoked one by one. The same people may do it as may freeze the user, and anyone to
    itself."""
    ensure_can_manage(context.principal, user)
    _end_sessions(user)
    session.flush()
    audit.record(
        session,
        context=context,
        action="user.revoke_sessions",
        target_type="user",
        target_id=user.id,
        tenant_id=user.tenant_id,
    )
    return user


def has_totp(session: Session, *, user_id: int) -> bool:
    """Whether the user has enrolled a console second factor."""
    return bool(session.scalar(select(User.totp_secret.is_not(None)).where(User.id == user_id)))


def set_totp(session: Session, *, context: RequestContext, user: User, secret: str | None) -> User:
    """Enrol (a base32 secret the user has just proven with a code) or remove the user's console second factor.
    Only the user itself does either (through the console, which checks a current code first)."""
    if context.principal.user_id != user.id:
        raise Forbidden("a second factor is enrolled or removed by its own user")
    user.totp_secret = secret
    user.totp_enrolled_at = sa.func.now() if secret else None
    session.flush()
    audit.record(
        session,
        context=context,
        action="user.totp_enrol" if secret else "user.totp_remove",
        target_type="user",
        target_id=user.id,
        tenant_id=user.tenant_id,
    )
    return user
