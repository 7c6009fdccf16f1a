"""Resolving credentials to a Principal: one query for a JWT subject, one for an API key."""

from __future__ import annotations

import hmac
import logging
import time
import weakref

import jwt
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.api_keys import keys
from facemint.auth.jwt_tokens import decode_access_token
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope, scopes_for_role
from facemint.config import Settings
from facemint.db import PreparedStatement
from facemint.errors import Unauthorized
from facemint.tenants.errors import TenantSuspended
from facemint.users.errors import UserFrozen
from facemint.users.orm import Role

logger = logging.getLogger("facemint.auth")

LAST_USED_KEY = "facemint:api-key:last-used:{}"
_LAST_USED_FLUSH_KEY = "facemint:api-key:last-used-flushed:{}"
LAST_USED_FLUSH_SECONDS = 60

_PRINCIPAL_COLUMNS = """
    u.id AS user_id, u.email, u.role, u.status AS user_status, u.tenant_id, u.account_id,
    u.credentials_version, t.status AS tenant_status, coalesce(t.plan, 'platform') AS plan
"""


def principal_from_jwt(session: Session, settings: Settings, token: str) -> Principal:
    try:
        subject = decode_access_token(settings, token)
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid or expired access token") from exc
    return principal_for_user(
        session, user_id=subject.user_id, credentials_version=subject.credentials_version, invalid="access token"
    )


def principal_for_user(
    session: Session, *, user_id: int, credentials_version: int, invalid: str = "session"
) -> Principal:
    """A signed-in user (an access token's subject, a console session's user) as a Principal with its role's
    scopes, if the credentials it signed in with are still current."""
    row = session.execute(
        text(f"SELECT {_PRINCIPAL_COLUMNS} FROM users u LEFT JOIN tenants t ON t.id = u.tenant_id WHERE u.id = :id"),
        {"id": user_id},
    ).one_or_none()
    # A token dies with the credentials it was issued under: a password, role or status change, a tenant
    # suspension or signing out everywhere moves the user's version on.
    if row is None or row.credentials_version != credentials_version:
        raise Unauthorized(f"invalid or expired {invalid}")
    _ensure_active(row)
    return Principal(
        user_id=row.user_id,
        email=row.email,
        role=Role(row.role),
        tenant_id=row.tenant_id,
        account_id=row.account_id,
        plan=row.plan,
        scopes=scopes_for_role(row.role),
    )


# Every API request runs this: prepared, so Postgres plans its three-table join once per connection.
_API_KEY_PRINCIPAL = PreparedStatement(
    "fm_api_key_principal",
    f"""
    SELECT k.id AS key_id, k.secret_hash, k.scopes, k.revoked_at,
           (k.expires_at IS NOT NULL AND k.expires_at <= now()) AS expired, {_PRINCIPAL_COLUMNS}
    FROM api_keys k JOIN users u ON u.id = k.user_id LEFT JOIN tenants t ON t.id = u.tenant_id
    WHERE k.public_id = :public_id
    """,
    {"public_id": "text"},
)


def principal_from_api_key(session: Session, settings: Settings, redis: Redis, key: str) -> Principal:
    try:
        public_id = keys.parse_public_id(key)
    except keys.MalformedKey as exc:
        raise Unauthorized(str(exc)) from exc
    row = _API_KEY_PRINCIPAL.execute(session, {"public_id": public_id}).one_or_none()
    presented = keys.hash_key(settings.api_key_pepper_bytes, key)
    if row is None or not hmac.compare_digest(bytes(row.secret_hash), presented):
        raise Unauthorized("invalid API key")
    if row.revoked_at is not None:
        raise Unauthorized("this API key was revoked")
    if row.expired:
        raise Unauthorized("this API key has expired")
    _ensure_active(row)
    _track_last_use(session, redis, key_id=row.key_id)
    role_scopes = scopes_for_role(row.role)
    return Principal(
        user_id=row.user_id,
        email=row.email,
        role=Role(row.role),
        tenant_id=row.tenant_id,
        account_id=row.account_id,
        plan=row.plan,
        # A key never exceeds its user's current role, even if the role was lowered after it was issued.
        scopes=frozenset(Scope(s) for s in row.scopes if s in role_scopes),
        api_key_id=row.key_id,
        api_key_public_id=public_id,
    )


def _ensure_active(row: object) -> None:
    if getattr(row, "user_status", "active") != "active":
        raise UserFrozen("this user is frozen")
    if getattr(row, "tenant_status", None) == "suspended":
        raise TenantSuspended("this tenant is suspended")


# The second each key's last use was last written to each Redis by this process: the value is whole seconds, so a
# key used many times a second is written once in it (a Redis round trip saved on every other request). Per Redis
# client, so that two apps in one process (on two databases whose key ids overlap) never skip each other's writes.
_last_written: weakref.WeakKeyDictionary[Redis, dict[int, int]] = weakref.WeakKeyDictionary()


def _track_last_use(session: Session, redis: Redis, *, key_id: int) -> None:
    """Last use goes to Redis to the second (each process writes a key's once a second at most); the database
    copy at most once a minute per key. Both Redis writes go in one round trip."""
    now = int(time.time())
    written = _last_written.setdefault(redis, {})
    if written.get(key_id) == now:
        return
    pipe = redis.pipeline(transaction=False)
    pipe.set(LAST_USED_KEY.format(key_id), now)
    pipe.set(_LAST_USED_FLUSH_KEY.format(key_id), 1, nx=True, ex=LAST_USED_FLUSH_SECONDS)
    try:
        _, flush = pipe.execute()
    except RedisError:
        logger.warning("could not record last use of API key %s", key_id)
        return
    if len(written) > 100_000:  # bounded: the keys of this process's last moments are all it needs
        written.clear()
    written[key_id] = now
    if flush:
        session.execute(text("UPDATE api_keys SET last_used_at = now() WHERE id = :id"), {"id": key_id})
