from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from facemint.auth.jwt_tokens import issue_access_token
from facemint.auth.passwords import verify_password
from facemint.deps import SessionDep, SettingsDep
from facemint.errors import Unauthorized
from facemint.ratelimit import RateLimiter, client_ip
from facemint.tenants.errors import TenantSuspended
from facemint.users.errors import UserFrozen

router = APIRouter(prefix="/auth", tags=["auth"])


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


@router.post("/token", response_model=TokenResponse)
def create_token(body: TokenRequest, request: Request, session: SessionDep, settings: SettingsDep) -> TokenResponse:
    email = body.email.strip().lower()
    limiter: RateLimiter = request.app.state.limiter
    # Per address and per account; the account bucket is a hash, so no email is written to Redis.
    account_bucket = hashlib.sha256(email.encode()).hexdigest()[:32]
    limiter.hit(
        request,
        [
            (f"login-ip:{client_ip(request, settings.trusted_proxies)}", settings.login_limit_per_ip),
            (f"login-account:{account_bucket}", settings.login_limit_per_account),
        ],
    )
    row = session.execute(
        text(
            "SELECT u.id, u.password_hash, u.status, t.status AS tenant_status FROM users u "
            "LEFT JOIN tenants t ON t.id = u.tenant_id WHERE u.email = :email"
        ),
        {"email": email},
    ).one_or_none()
    if not verify_password(row.password_hash if row else None, body.password) or row is None:
        raise Unauthorized("wrong email or password")
    if row.status != "active":
        raise UserFrozen("this user is frozen")
    if row.tenant_status == "suspended":
        raise TenantSuspended("this tenant is suspended")
    token = issue_access_token(settings, user_id=row.id)
    return TokenResponse(access_token=token.token, expires_in=token.expires_in)
