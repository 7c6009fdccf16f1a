from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, SettingsDep, request_context, require
from facemint.webhooks import service as webhook_service
from facemint.webhooks.schemas import WebhookSecretRead

admin_router = APIRouter(prefix="/admin/v1/tenants", tags=["webhooks"])

# The secret signs webhooks: whoever reads it can forge one. Only those who may rotate it (tenant admins for
# their own tenant, operators and platform admins) may read it; finance's read-everything scope does not.
Keeper = Annotated[Principal, Depends(require(Scope.webhooks_write))]


@admin_router.get("/{tenant_id}/webhook-secret", response_model=WebhookSecretRead)
def get_webhook_secret(tenant_id: int, response: Response, session: SessionDep, principal: Keeper) -> WebhookSecretRead:
    principal.ensure_tenant_visible(tenant_id, what="tenant")
    secret = webhook_service.get_secret(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    response.headers["Cache-Control"] = "no-store"
    return WebhookSecretRead(secret=secret)


@admin_router.post("/{tenant_id}/webhook-secret/rotate", response_model=WebhookSecretRead)
def rotate_webhook_secret(
    tenant_id: int,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: Keeper,
) -> WebhookSecretRead:
    principal.ensure_tenant_visible(tenant_id, what="tenant")
    secret = webhook_service.rotate_secret(
        session,
        context=request_context(request, principal, settings),
        tenant_id=tenant_id,
        tenant_scope=principal.tenant_scope,
    )
    response.headers["Cache-Control"] = "no-store"
    return WebhookSecretRead(secret=secret)
