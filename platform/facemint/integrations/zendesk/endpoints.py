"""The Zendesk connector's routes: its webhook (authenticated by Zendesk's signature alone, no API key) and its
admin API under /admin/v1/tenants/{tenant_id}/integrations/zendesk (tenant admins for their own tenant, staff
for any; `integrations:read` shows no credential)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.deps import (
    SessionDep,
    SettingsDep,
    commit_in_this_thread,
    page_params,
    request_context,
    require,
    require_released,
    rollback_in_this_thread,
)
from facemint.integrations.zendesk import flow, service
from facemint.integrations.zendesk.errors import InvalidWebhookSignature, UnsupportedAssetType
from facemint.integrations.zendesk.orm import AssetKind, TicketStatus
from facemint.integrations.zendesk.schemas import (
    AssetList,
    AssetRead,
    ConnectorRead,
    ConnectorWrite,
    RulesRead,
    RulesWrite,
    TicketRead,
    WebhookAnswer,
)
from facemint.pagination import Page, PageParams, make_page
from facemint.ratelimit import RateLimiter, address_bucket, client_ip
from facemint.storage import Storage

WEBHOOK_PREFIX = "/integrations/zendesk/"
ADMIN_PREFIX = "/admin/v1/tenants/{tenant_id}/integrations/zendesk"
ASSET_TYPES = ("image/png", "image/jpeg", "image/webp")

webhook_router = APIRouter(prefix="/integrations/zendesk", tags=["integrations"])
admin_router = APIRouter(prefix=ADMIN_PREFIX, tags=["integrations"])

Reader = Annotated[Principal, Depends(require(Scope.integrations_read))]
Writer = Annotated[Principal, Depends(require(Scope.integrations_write))]
# Authenticated with nothing held afterwards: the image is read after the caller is known.
Uploader = Annotated[Principal, Depends(require_released(Scope.integrations_write))]


def is_asset_upload(path: str) -> bool:
    """The body limit's test for the asset upload's path (the image limit, not the default)."""
    return path.startswith("/admin/v1/tenants/") and path.endswith("/integrations/zendesk/assets")


def is_webhook(path: str) -> bool:
    return path.startswith(WEBHOOK_PREFIX) and path.endswith("/webhook")


# --- the webhook -------------------------------------------------------------------------------------------------


@webhook_router.post(
    "/{connector_id}/webhook",
    response_model=WebhookAnswer,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "description": "the ticket event"}}},
        }
    },
    responses={
        200: {"description": "a replay, a skipped ticket (nothing charged) or an event the connector ignores"},
        202: {"model": WebhookAnswer, "description": "accepted: the swap is queued, or its result is cached"},
        401: {"description": "no valid, fresh Zendesk signature for this endpoint: nothing ran"},
        422: {"description": "signed, but not a ticket event this connector reads"},
        429: {"description": "too many refused webhooks from this address, or the tenant's jobs at their cap"},
        503: {"description": "Postgres or the queue unavailable: nothing was recorded; Zendesk retries"},
    },
)
async def zendesk_webhook(
    connector_id: Annotated[str, Path(max_length=64, description="the connector's id (`zdc_...`)")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """A Zendesk ticket event. Authenticated by its signature (`X-Zendesk-Webhook-Signature`, HMAC-SHA256 with the
    connector's signing secret over `X-Zendesk-Webhook-Signature-Timestamp` and the body; the timestamp within
    `zendesk_webhook_tolerance_seconds`): without one, 401 and nothing runs. A ticket is handled once."""
    body = await request.body()  # at most `zendesk_webhook_max_bytes`: BodyLimitMiddleware refuses more
    state = request.app.state
    services = flow.Services(settings=settings, redis=state.redis, sessions=state.sessionmaker, storage=state.storage)
    request_id = getattr(request.state, "request_id", None)

    def handle() -> WebhookAnswer:
        try:
            connector = flow.verify(
                session, settings=settings, connector_id=connector_id, headers=request.headers, body=body
            )
            answer = flow.receive(session, services=services, connector=connector, body=body, request_id=request_id)
        except BaseException:
            rollback_in_this_thread(session)
            raise
        # The checks, COMMIT and queueing of the swap, in this thread hop (as a submit does).
        commit_in_this_thread(session)
        return answer

    try:
        answer = await run_in_threadpool(handle)
    except InvalidWebhookSignature:
        # Refusals count against the sender's address, as failed authentications do; valid webhooks never are.
        limiter: RateLimiter = state.limiter
        address = address_bucket(client_ip(request, settings.trusted_proxies))
        limiter.hit(
            request,
            [(f"anon-ip:{address}", settings.anonymous_limit_per_ip)],
            reason="too many failed attempts from this address",
        )
        raise
    code = status.HTTP_202_ACCEPTED if answer.status == "accepted" else status.HTTP_200_OK
    return JSONResponse(answer.model_dump(mode="json"), status_code=code)


# --- the connector -----------------------------------------------------------------------------------------------


@admin_router.get("", response_model=ConnectorRead)
def get_connector(tenant_id: int, session: SessionDep, settings: SettingsDep, principal: Reader) -> ConnectorRead:
    connector = service.get_connector(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return service.read_connector(connector, settings=settings)


@admin_router.put("", response_model=ConnectorRead)
def put_connector(
    tenant_id: int,
    body: ConnectorWrite,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
) -> ConnectorRead:
    """Create or replace the tenant's connector. `api_token` and `signing_secret` are sealed (AES-256-GCM) before
    they are stored and never shown again: the answer has their fingerprints."""
    connector = service.put_connector(
        session,
        context=request_context(request, principal, settings),
        settings=settings,
        tenant_id=tenant_id,
        tenant_scope=principal.tenant_scope,
        data=body,
    )
    response.headers["Cache-Control"] = "no-store"
    return service.read_connector(connector, settings=settings)


# --- rules -------------------------------------------------------------------------------------------------------


@admin_router.get("/rules", response_model=RulesRead)
def get_rules(tenant_id: int, session: SessionDep, principal: Reader) -> RulesRead:
    connector = service.get_connector(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return service.read_rules(connector)


@admin_router.put("/rules", response_model=RulesRead)
def put_rules(
    tenant_id: int, body: RulesWrite, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer
) -> RulesRead:
    """Replace the rules (in order: the first a ticket matches wins) and the default."""
    return service.put_rules(
        session,
        context=request_context(request, principal, settings),
        tenant_id=tenant_id,
        tenant_scope=principal.tenant_scope,
        data=body,
    )


# --- assets ------------------------------------------------------------------------------------------------------


async def _storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


@admin_router.post(
    "/assets",
    response_model=AssetRead,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in ASSET_TYPES},
        }
    },
    responses={
        401: {"description": "missing or invalid credentials"},
        403: {"description": "the credentials may not do this"},
        404: {"description": "not found (or another tenant's)"},
        409: {"description": "the tenant keeps as many assets as it may"},
        413: {"description": "the image is larger than `max_image_bytes` or has too many pixels"},
        415: {"description": "not a PNG, JPEG or WebP image"},
        429: {"description": "rate limited"},
    },
)
async def upload_asset(
    tenant_id: int,
    kind: AssetKind,
    name: Annotated[str, Query(min_length=1, max_length=200, pattern=r"\S")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Uploader,
    storage: Annotated[Storage, Depends(_storage)],
) -> AssetRead:
    """Upload an avatar template (a face) or a scene (where the face goes): the image itself as the body, typed
    image/png, image/jpeg or image/webp. Rules name it by its id; nothing else ever names an image."""
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if declared not in ASSET_TYPES:
        raise UnsupportedAssetType(f"send the image as the body, typed {', '.join(ASSET_TYPES)}")
    data = await request.body()  # at most the image limit: BodyLimitMiddleware refuses more
    context = request_context(request, principal, settings)

    def create() -> AssetRead:
        try:
            asset = service.create_asset(
                session,
                context=context,
                settings=settings,
                storage=storage,
                tenant_id=tenant_id,
                tenant_scope=principal.tenant_scope,
                kind=kind,
                name=name.strip(),
                data=data,
            )
            read = service.read_asset(asset)
        except BaseException:
            rollback_in_this_thread(session)
            raise
        commit_in_this_thread(session)
        return read

    return await run_in_threadpool(create)


@admin_router.get("/assets", response_model=AssetList)
def list_assets(tenant_id: int, session: SessionDep, principal: Reader) -> AssetList:
    assets = service.list_assets(session, tenant_id=tenant_id, tenant_scope=principal.tenant_scope)
    return AssetList(items=[service.read_asset(asset) for asset in assets])


@admin_router.delete("/assets/{asset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_asset(
    tenant_id: int,
    asset_id: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Writer,
    storage: Annotated[Storage, Depends(_storage)],
) -> Response:
    """Retire an asset that no rule or default names (409 otherwise); its image is deleted."""
    service.delete_asset(
        session,
        context=request_context(request, principal, settings),
        storage=storage,
        tenant_id=tenant_id,
        tenant_scope=principal.tenant_scope,
        asset_id=asset_id,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- tickets -----------------------------------------------------------------------------------------------------


@admin_router.get("/tickets", response_model=Page[TicketRead])
def list_tickets(
    tenant_id: int,
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    status: TicketStatus | None = None,
) -> Page[TicketRead]:
    """The tickets the webhook delivered, newest first: what each matched, its job, its reply."""
    items = service.list_tickets(
        session,
        tenant_id=tenant_id,
        tenant_scope=principal.tenant_scope,
        status=status,
        before_id=page.before_id,
        limit=page.limit,
    )
    return make_page(items, limit=page.limit)
