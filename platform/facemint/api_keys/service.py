from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint import tenancy
from facemint.api_keys import keys
from facemint.api_keys.errors import ApiKeyNotFound, InvalidExpiry, ScopeNotAllowed
from facemint.api_keys.orm import ApiKey
from facemint.api_keys.schemas import ApiKeyCreate, ApiKeyRead
from facemint.audit import service as audit
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope, scopes_for_role
from facemint.auth.service import LAST_USED_KEY
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant
from facemint.users import service as user_service
from facemint.users.orm import Role, User


def _snapshot(api_key: ApiKey) -> dict[str, object]:
    return {
        "prefix": keys.display_prefix(api_key.public_id),
        "name": api_key.name,
        "user_id": api_key.user_id,
        "scopes": list(api_key.scopes),
        "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
        "revoked_at": api_key.revoked_at.isoformat() if api_key.revoked_at else None,
    }


def issuable_scopes(issuer: Principal | None, user: User) -> frozenset[Scope]:
    """The scopes a key for `user` may carry when `issuer` issues it: its user's role's, and (nobody hands out
    more than they hold) only those the issuer holds itself. None: the command line."""
    allowed = scopes_for_role(user.role)
    return allowed if issuer is None else allowed & issuer.scopes


def create(
    session: Session, *, context: RequestContext | None, settings: Settings, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """A new key for a user; returns the row and the key (shown once)."""
    tenant_scope = context.principal.tenant_scope if context else None
    user = user_service.get(session, user_id=data.user_id, tenant_scope=tenant_scope)
    user_service.ensure_can_manage(context.principal if context else None, user)
    allowed = issuable_scopes(context.principal if context else None, user)
    refused = sorted({s.value for s in data.scopes} - {s.value for s in allowed})
    if refused:
        raise ScopeNotAllowed(
            f"scopes not allowed for this user: {', '.join(refused)}",
            scopes=refused,
        )
    # A key is privilege handed to its user: operator and finance keys come from platform admins only.
    user_service.ensure_can_grant(
        context.principal if context else None, target=user, role=Role(user.role), scopes=frozenset(data.scopes)
    )
    if data.expires_at is not None and data.expires_at <= datetime.now(UTC):
        raise InvalidExpiry("expires_at must be in the future")
    new_key = keys.generate()
    api_key = ApiKey(
        public_id=new_key.public_id,
        user_id=user.id,
        tenant_id=user.tenant_id,
        name=data.name,
        scopes=sorted({s.value for s in data.scopes}),
        secret_hash=keys.hash_key(settings.api_key_pepper_bytes, new_key.key),
        created_by_user_id=context.principal.user_id if context else None,
        expires_at=data.expires_at,
    )
    session.add(api_key)
    session.flush()
    audit.record(
        session,
        context=context,
        action="api_key.create",
        target_type="api_key",
        target_id=api_key.id,
        tenant_id=api_key.tenant_id,
        after=_snapshot(api_key),
    )
    return api_key, new_key.key


def get(session: Session, *, key_id: int, tenant_scope: int | None) -> ApiKey:
    api_key = session.get(ApiKey, key_id)
    if api_key is None or not tenancy.is_visible(tenant_scope, api_key.tenant_id):
        raise ApiKeyNotFound(f"API key {key_id} not found")
    return api_key


def list_keys(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    user_id: int | None,
    include_revoked: bool,
    before_id: int | None,
    limit: int,
) -> list[ApiKey]:
    query = within_tenant(select(ApiKey), ApiKey.tenant_id, tenant_scope=tenant_scope, tenant_id=tenant_id)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    query = newest_first(query, ApiKey.id, before_id=before_id, limit=limit)
    return list(session.scalars(query))


def revoke(session: Session, *, context: RequestContext, api_key: ApiKey) -> ApiKey:
    owner = session.get(User, api_key.user_id)
    assert owner is not None
    user_service.ensure_can_manage(context.principal, owner)
    if api_key.revoked_at is None:
        before = _snapshot(api_key)
        api_key.revoked_at = datetime.now(UTC)
        session.flush()
        audit.record(
            session,
            context=context,
            action="api_key.revoke",
            target_type="api_key",
            target_id=api_key.id,
            tenant_id=api_key.tenant_id,
            before=before,
            after=_snapshot(api_key),
        )
    return api_key


def to_read(api_keys: list[ApiKey], *, redis: Redis) -> list[ApiKeyRead]:
    """Listing shows the exact last use from Redis, falling back to the database's per-minute copy."""
    live: list[bytes | str | None] = [None] * len(api_keys)
    if api_keys:
        with contextlib.suppress(RedisError):
            live = redis.mget([LAST_USED_KEY.format(k.id) for k in api_keys])
    out = []
    for api_key, seen in zip(api_keys, live, strict=True):
        last_used = api_key.last_used_at
        if seen:
            last_used = datetime.fromtimestamp(int(seen), UTC)
        out.append(
            ApiKeyRead(
                id=api_key.id,
                prefix=keys.display_prefix(api_key.public_id),
                name=api_key.name,
                user_id=api_key.user_id,
                tenant_id=api_key.tenant_id,
                scopes=list(api_key.scopes),
                created_at=api_key.created_at,
                expires_at=api_key.expires_at,
                revoked_at=api_key.revoked_at,
                last_used_at=last_used,
            )
        )
    return out
