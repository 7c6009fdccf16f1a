from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import SessionDep, SettingsDep, request_context, require
from facemint.tenants import service as tenant_service
from facemint.webhooks import service as webhook_service
from facemint.webhooks.schemas import EventsWebhookRead, EventsWebhookUpdate, WebhookEventRead, WebhookSecretRead

admin_router = APIRouter(prefix="/admin/v1/tenants", tags=["webhooks"])

# The secret signs webhooks: whoever reads it can forge one. Only those who may rotate it (tenant admins for
# their own tenant, operators and platform admins) may read it; finance's read-everything scope does not.
Keeper = Annotated[Principal, Depends(require(Scope.webhooks_write))]
# Account events (low balance, abuse) are about the tenant's accounts: whoever reads tenants reads them.
TenantReader = Annotated[Principal, Depends(require(Scope.tenants_read))]


@admin_router.get("/{tenant_id}/events", response_model=list[WebhookEventRead])
def list_tenant_events(
    tenant_id: int,
    session: SessionDep,
    principal: TenantReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[WebhookEventRead]:
    """The tenant's account events (low balance, abuse; sent to its `events_webhook_url`), newest first, with
    every delivery attempt."""
    principal.ensure_tenant_visible(tenant_id, what="tenant")
    return webhook_service.list_tenant_events(session, tenant_id=tenant_id, limit=limit)


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


@admin_router.get("/{tenant_id}/events-webhook", response_model=EventsWebhookRead)
def get_events_webhook(tenant_id: int, session: SessionDep, principal: TenantReader) -> EventsWebhookRead:
    principal.ensure_tenant_visible(tenant_id, what="tenant")
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return EventsWebhookRead(url=tenant.events_webhook_url)


@admin_router.put("/{tenant_id}/events-webhook", response_model=EventsWebhookRead)
def set_events_webhook(
    tenant_id: int,
    body: EventsWebhookUpdate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Keeper,
) -> EventsWebhookRead:
    """Where the tenant's account events go (checked like a job's webhook URL); null stops them."""
    principal.ensure_tenant_visible(tenant_id, what="tenant")
    url = body.url
    if url is not None:
        url = webhook_service.validate_webhook_url(url, allowed_networks=settings.webhook_allowed_networks)
    url = webhook_service.set_events_url(
        session,
        context=request_context(request, principal, settings),
        tenant_id=tenant_id,
        tenant_scope=principal.tenant_scope,
        url=url,
    )
    return EventsWebhookRead(url=url)
