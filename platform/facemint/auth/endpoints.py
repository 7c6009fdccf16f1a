from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from facemint.auth.jwt_tokens import issue_access_token
from facemint.auth.passwords import verify_password
from facemint.deps import CurrentPrincipal, SessionDep, SettingsDep, request_context
from facemint.errors import Unauthorized
from facemint.ratelimit import RateLimiter, address_bucket, client_ip
from facemint.tenants.errors import TenantSuspended
from facemint.users import service as user_service
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


@router.post(
    "/token",
    response_model=TokenResponse,
    responses={
        401: {"description": "wrong email or password"},
        403: {"description": "the user is frozen or its tenant suspended"},
        429: {"description": "too many attempts from this address, or failures for this account"},
    },
)
def create_token(body: TokenRequest, request: Request, session: SessionDep, settings: SettingsDep) -> TokenResponse:
    email = body.email.strip().lower()
    limiter: RateLimiter = request.app.state.limiter
    # Every attempt counts against its address (IPv6: its /64): each costs an argon2 verification.
    ip_bucket = f"login-ip:{address_bucket(client_ip(request, settings.trusted_proxies))}"
    limiter.hit(request, [(ip_bucket, settings.login_limit_per_ip)])
    # Only failures count against the account (a hash, so no email is written to Redis): its owner signing in
    # often is never locked out, while a guesser is, whatever address it comes from.
    account_bucket = f"login-account:{hashlib.sha256(email.encode()).hexdigest()[:32]}"
    limiter.ensure_open(
        account_bucket, settings.login_limit_per_account, reason="too many failed sign-ins for this account"
    )
    row = session.execute(
        text(
            "SELECT u.id, u.password_hash, u.status, u.credentials_version, t.status AS tenant_status FROM users u "
            "LEFT JOIN tenants t ON t.id = u.tenant_id WHERE u.email = :email"
        ),
        {"email": email},
    ).one_or_none()
    if not verify_password(row.password_hash if row else None, body.password) or row is None:
        limiter.count(account_bucket, settings.login_limit_per_account)
        raise Unauthorized("wrong email or password")
    if row.status != "active":
        raise UserFrozen("this user is frozen")
    if row.tenant_status == "suspended":
        raise TenantSuspended("this tenant is suspended")
    token = issue_access_token(settings, user_id=row.id, credentials_version=row.credentials_version)
    return TokenResponse(access_token=token.token, expires_in=token.expires_in)


@router.post("/revoke", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def revoke_sessions(request: Request, session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal) -> None:
    """Sign out everywhere: every access token issued to the caller's user so far stops working. API keys are
    separate credentials, revoked one by one (DELETE /admin/v1/api-keys/{id})."""
    user = user_service.get(session, user_id=principal.user_id, tenant_scope=principal.tenant_scope)
    user_service.revoke_sessions(session, context=request_context(request, principal, settings), user=user)
