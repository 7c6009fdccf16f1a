from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from facemint.auth.jwt_tokens import issue_access_token
from facemint.auth.signin import check_password
from facemint.deps import CurrentPrincipal, SessionDep, SettingsDep, request_context
from facemint.users import service as user_service

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
    signed_in = check_password(request, session, settings, email=body.email, password=body.password)
    token = issue_access_token(settings, user_id=signed_in.user_id, credentials_version=signed_in.credentials_version)
    return TokenResponse(access_token=token.token, expires_in=token.expires_in)


@router.post("/revoke", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def revoke_sessions(request: Request, session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal) -> None:
    """Sign out everywhere: every access token issued to the caller's user so far stops working. API keys are
    separate credentials, revoked one by one (DELETE /admin/v1/api-keys/{id})."""
    user = user_service.get(session, user_id=principal.user_id, tenant_scope=principal.tenant_scope)
    user_service.revoke_sessions(session, context=request_context(request, principal, settings), user=user)
