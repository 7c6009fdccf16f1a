"""Signing in with an email and a password: the one check behind `POST /auth/token` and the console's sign-in,
with the same rate limits (per address, and failures per account)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.requests import Request

from facemint.auth.passwords import verify_password
from facemint.config import Settings
from facemint.errors import Unauthorized
from facemint.ratelimit import RateLimiter, address_bucket, client_ip
from facemint.tenants.errors import TenantSuspended
from facemint.users.errors import UserFrozen


@dataclass(frozen=True, slots=True)
class SignedIn:
    user_id: int
    credentials_version: int
    role: str
    totp_secret: str | None


def check_password(request: Request, session: Session, settings: Settings, *, email: str, password: str) -> SignedIn:
    email = email.strip().lower()
    limiter: RateLimiter = request.app.state.limiter
    # Every attempt counts against its address (IPv6: its /64): each costs an argon2 verification.
    ip_bucket = f"login-ip:{address_bucket(client_ip(request, settings.trusted_proxies))}"
    limiter.hit(request, [(ip_bucket, settings.login_limit_per_ip)])
    # Only failures count against the account (a hash, so no email is written to Redis): its owner signing in
    # often is never locked out, while a guesser is, whatever address it comes from.
    account_bucket = account_failures_bucket(email)
    limiter.ensure_open(
        account_bucket, settings.login_limit_per_account, reason="too many failed sign-ins for this account"
    )
    row = session.execute(
        text(
            "SELECT u.id, u.password_hash, u.status, u.role, u.credentials_version, u.totp_secret, "
            "t.status AS tenant_status FROM users u LEFT JOIN tenants t ON t.id = u.tenant_id WHERE u.email = :email"
        ),
        {"email": email},
    ).one_or_none()
    if not verify_password(row.password_hash if row else None, password) or row is None:
        limiter.count(account_bucket, settings.login_limit_per_account)
        raise Unauthorized("wrong email or password")
    if row.status != "active":
        raise UserFrozen("this user is frozen")
    if row.tenant_status == "suspended":
        raise TenantSuspended("this tenant is suspended")
    return SignedIn(
        user_id=row.id, credentials_version=row.credentials_version, role=row.role, totp_secret=row.totp_secret
    )


def account_failures_bucket(email: str) -> str:
    return f"login-account:{hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]}"


def count_failure(request: Request, settings: Settings, *, email: str) -> None:
    """A failure after the password (a wrong second-factor code) counts against the account like a wrong password."""
    limiter: RateLimiter = request.app.state.limiter
    limiter.count(account_failures_bucket(email), settings.login_limit_per_account)
