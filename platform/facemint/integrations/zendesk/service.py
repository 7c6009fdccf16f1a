"""The connector's settings, assets and rules (the admin API), and the reads the flows share. Tenant visibility
is `facemint.tenancy`'s (through the tenant and `within_tenant`); services flush, the boundary commits."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facemint import tenancy
from facemint.audit import service as audit
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.db import after_commit, after_rollback
from facemint.integrations import credentials
from facemint.integrations.zendesk import client
from facemint.integrations.zendesk.errors import (
    AssetInUse,
    AssetNotFound,
    ConnectorNotFound,
    InvalidConnector,
    InvalidRules,
    TooManyAssets,
)
from facemint.integrations.zendesk.orm import AssetKind, ZendeskAsset, ZendeskConnector, ZendeskTicket
from facemint.integrations.zendesk.schemas import (
    AssetPair,
    AssetRead,
    ConnectorRead,
    ConnectorWrite,
    RulesRead,
    RulesWrite,
    RuleWrite,
    TicketRead,
    TicketStatus,
)
from facemint.jobs.orm import Job
from facemint.pagination import newest_first
from facemint.storage import Storage
from facemint.tenancy import within_tenant
from facemint.tenants import service as tenant_service
from facemint.users.orm import User
from inference import media

MAX_ASSETS_PER_TENANT = 200
WEBHOOK_PATH = "/integrations/zendesk/{connector_id}/webhook"


# --- credentials -----------------------------------------------------------------------------------------------


def _context(tenant_id: int, field: str) -> str:
    """What a sealed credential is bound to: the table, the tenant (one connector each) and the field."""
    return f"zendesk_connectors:{tenant_id}:{field}"


def api_token(connector: ZendeskConnector, *, settings: Settings) -> str:
    return credentials.unseal(
        connector.api_token_sealed,
        keys=credentials.keyring(settings),
        context=_context(connector.tenant_id, "api_token"),
    )


def signing_secret(connector: ZendeskConnector, *, settings: Settings) -> str | None:
    if connector.signing_secret_sealed is None:
        return None
    return credentials.unseal(
        connector.signing_secret_sealed,
        keys=credentials.keyring(settings),
        context=_context(connector.tenant_id, "signing_secret"),
    )


# --- the connector -----------------------------------------------------------------------------------------------


def connector_by_public_id(session: Session, *, public_id: str) -> ZendeskConnector | None:
    return session.scalar(select(ZendeskConnector).where(ZendeskConnector.public_id == public_id))


def _find(session: Session, *, tenant_id: int, for_update: bool = False) -> ZendeskConnector | None:
    # The caller has checked the tenant is visible; this names the tenant's one connector.
    query = tenancy.within_tenant(
        select(ZendeskConnector), ZendeskConnector.tenant_id, tenant_scope=None, tenant_id=tenant_id
    )
    return session.scalar(query.with_for_update() if for_update else query)


def get_connector(
    session: Session, *, tenant_id: int, tenant_scope: int | None, for_update: bool = False
) -> ZendeskConnector:
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    connector = _find(session, tenant_id=tenant.id, for_update=for_update)
    if connector is None:
        raise ConnectorNotFound(f"tenant {tenant_id} has no Zendesk connector")
    return connector


def read_connector(connector: ZendeskConnector, *, settings: Settings) -> ConnectorRead:
    path = WEBHOOK_PATH.format(connector_id=connector.public_id)
    return ConnectorRead(
        tenant_id=connector.tenant_id,
        connector_id=connector.public_id,
        webhook_url=settings.api_url.rstrip("/") + path,
        base_url=connector.base_url,
        api_email=connector.api_email,
        api_token_fingerprint=connector.api_token_fingerprint,
        signing_secret_fingerprint=connector.signing_secret_fingerprint,
        credentials_key_id=credentials.key_id(connector.api_token_sealed),
        integration_user_id=connector.integration_user_id,
        enabled=connector.enabled,
        processors=list(connector.processors),
        reply_body=connector.reply_body,
        created_at=connector.created_at,
        updated_at=connector.updated_at,
    )


def _snapshot(connector: ZendeskConnector) -> dict[str, Any]:
    # Fingerprints, never the credentials: the trail shows that they changed, not what to.
    return {
        "base_url": connector.base_url,
        "api_email": connector.api_email,
        "api_token_sha256": connector.api_token_fingerprint,
        "signing_secret_sha256": connector.signing_secret_fingerprint,
        "integration_user_id": connector.integration_user_id,
        "enabled": connector.enabled,
        "processors": list(connector.processors),
    }


def put_connector(
    session: Session,
    *,
    context: RequestContext,
    settings: Settings,
    tenant_id: int,
    tenant_scope: int | None,
    data: ConnectorWrite,
) -> ZendeskConnector:
    """Create the tenant's connector or replace its settings; credentials left out are kept."""
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    base_url = client.base_url_for(subdomain=data.subdomain, base_url=data.base_url, settings=settings)
    user = session.get(User, data.integration_user_id)
    if user is None or not tenancy.is_visible(tenant.id, user.tenant_id):
        raise InvalidConnector(
            f"user {data.integration_user_id} is not a user of this tenant", field="integration_user_id"
        )
    connector = _find(session, tenant_id=tenant.id, for_update=True)
    before = None if connector is None else _snapshot(connector)
    if connector is None:
        if data.api_token is None:
            raise InvalidConnector("a new connector needs its `api_token`")
        connector = ZendeskConnector(public_id="zdc_" + secrets.token_hex(12), tenant_id=tenant.id)
        session.add(connector)
    keys = credentials.keyring(settings)
    if data.api_token is not None:
        token = data.api_token.get_secret_value()
        connector.api_token_sealed = credentials.seal(token, keys=keys, context=_context(tenant.id, "api_token"))
        connector.api_token_fingerprint = credentials.fingerprint(token)
    if data.signing_secret is not None:
        secret = data.signing_secret.get_secret_value()
        connector.signing_secret_sealed = credentials.seal(
            secret, keys=keys, context=_context(tenant.id, "signing_secret")
        )
        connector.signing_secret_fingerprint = credentials.fingerprint(secret)
    connector.base_url = base_url
    connector.api_email = data.api_email
    connector.integration_user_id = user.id
    connector.enabled = data.enabled
    connector.processors = list(dict.fromkeys(data.processors))
    connector.reply_body = data.reply_body
    session.flush()
    session.refresh(connector)  # updated_at, as the database stamped it
    audit.record(
        session,
        context=context,
        action="zendesk.connector.create" if before is None else "zendesk.connector.update",
        target_type="zendesk_connector",
        target_id=connector.public_id,
        tenant_id=tenant.id,
        before=before,
        after=_snapshot(connector),
    )
    return connector


# --- rules -------------------------------------------------------------------------------------------------------


def rules_of(connector: ZendeskConnector) -> tuple[list[RuleWrite], AssetPair | None]:
    rules = [RuleWrite.model_validate(rule) for rule in connector.rules]
    default = None
    if connector.default_template_id is not None and connector.default_scene_id is not None:
        default = AssetPair(template_id=connector.default_template_id, scene_id=connector.default_scene_id)
    return rules, default


def read_rules(connector: ZendeskConnector) -> RulesRead:
    rules, default = rules_of(connector)
    return RulesRead(rules=rules, default=default)


def _pairs(data: RulesWrite) -> Iterable[AssetPair]:
    yield from data.rules
    if data.default is not None:
        yield data.default


def put_rules(
    session: Session, *, context: RequestContext, tenant_id: int, tenant_scope: int | None, data: RulesWrite
) -> RulesRead:
    """Replace the rules and default. Every asset they name must be the tenant's, live and of the right kind;
    the connector's row lock orders this against an asset's deletion."""
    connector = get_connector(session, tenant_id=tenant_id, tenant_scope=tenant_scope, for_update=True)
    wanted = {(pair.template_id, AssetKind.template) for pair in _pairs(data)}
    wanted |= {(pair.scene_id, AssetKind.scene) for pair in _pairs(data)}
    live = {
        asset.id: asset.kind
        for asset in session.scalars(
            within_tenant(select(ZendeskAsset), ZendeskAsset.tenant_id, tenant_scope=connector.tenant_id)
            .where(ZendeskAsset.id.in_([asset_id for asset_id, _ in wanted]), ZendeskAsset.deleted_at.is_(None))
            .with_for_update()
        )
    }
    for asset_id, kind in sorted(wanted):
        if asset_id not in live:
            raise InvalidRules(f"asset {asset_id} is not one of this tenant's assets", asset_id=asset_id)
        if live[asset_id] != kind:
            raise InvalidRules(f"asset {asset_id} is a {live[asset_id]}, not a {kind.value}", asset_id=asset_id)
    before = read_rules(connector).model_dump(mode="json")
    connector.rules = [rule.model_dump(mode="json") for rule in data.rules]
    connector.default_template_id = data.default.template_id if data.default else None
    connector.default_scene_id = data.default.scene_id if data.default else None
    session.flush()
    after = read_rules(connector)
    audit.record(
        session,
        context=context,
        action="zendesk.rules.replace",
        target_type="zendesk_connector",
        target_id=connector.public_id,
        tenant_id=connector.tenant_id,
        before=before,
        after=after.model_dump(mode="json"),
    )
    return after


# --- assets ------------------------------------------------------------------------------------------------------


def asset_key(tenant_id: int, extension: str) -> str:
    return f"integrations/zendesk/{tenant_id}/assets/{secrets.token_hex(12)}.{extension}"


def read_asset(asset: ZendeskAsset) -> AssetRead:
    return AssetRead(
        id=asset.id,
        tenant_id=asset.tenant_id,
        kind=AssetKind(asset.kind),
        name=asset.name,
        content_type=asset.content_type,
        size_bytes=asset.size_bytes,
        width=asset.width,
        height=asset.height,
        sha256=data_hash(asset),
        created_at=asset.created_at,
    )


def create_asset(
    session: Session,
    *,
    context: RequestContext,
    settings: Settings,
    storage: Storage,
    tenant_id: int,
    tenant_scope: int | None,
    kind: AssetKind,
    name: str,
    data: bytes,
) -> ZendeskAsset:
    """Check the image (decoded within the image limits), store it, and record it. Nothing is stored if the
    transaction does not commit (the rollback removes it)."""
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    live = session.scalar(
        within_tenant(
            select(func.count()).select_from(ZendeskAsset), ZendeskAsset.tenant_id, tenant_scope=tenant.id
        ).where(ZendeskAsset.deleted_at.is_(None))
    )
    if (live or 0) >= MAX_ASSETS_PER_TENANT:
        raise TooManyAssets(f"a tenant keeps at most {MAX_ASSETS_PER_TENANT} assets; delete some first")
    # EngineError (415 not an image, 413 too large or too many pixels, 422 corrupt) reaches the caller as is.
    decoded = media.decode_image(
        data, limits=media.MediaLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    )
    key = asset_key(tenant.id, decoded.format.replace("jpeg", "jpg"))
    storage.put(key, data)
    after_rollback(session, lambda: storage.delete(key))
    asset = ZendeskAsset(
        tenant_id=tenant.id,
        kind=kind.value,
        name=name,
        storage_key=key,
        content_type=media.content_type(decoded.format),
        size_bytes=len(data),
        width=decoded.width,
        height=decoded.height,
        sha256=hashlib.sha256(data).digest(),
    )
    session.add(asset)
    session.flush()
    session.refresh(asset)
    audit.record(
        session,
        context=context,
        action="zendesk.asset.create",
        target_type="zendesk_asset",
        target_id=asset.id,
        tenant_id=tenant.id,
        after={"kind": asset.kind, "name": asset.name, "size_bytes": asset.size_bytes, "sha256": data_hash(asset)},
    )
    return asset


def data_hash(asset: ZendeskAsset) -> str:
    return bytes(asset.sha256).hex()


def list_assets(session: Session, *, tenant_id: int, tenant_scope: int | None) -> list[ZendeskAsset]:
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    query = within_tenant(select(ZendeskAsset), ZendeskAsset.tenant_id, tenant_scope=tenant.id)
    return list(session.scalars(query.where(ZendeskAsset.deleted_at.is_(None)).order_by(ZendeskAsset.id)))


def delete_asset(
    session: Session,
    *,
    context: RequestContext,
    storage: Storage,
    tenant_id: int,
    tenant_scope: int | None,
    asset_id: int,
) -> None:
    """Retire an asset no rule or default names (409 otherwise); its image goes once this commits. Results made
    from it stay cached: they are stored on their own."""
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    connector = _find(session, tenant_id=tenant.id, for_update=True)  # orders this against a rules write
    asset = session.scalar(
        within_tenant(select(ZendeskAsset), ZendeskAsset.tenant_id, tenant_scope=tenant.id)
        .where(ZendeskAsset.id == asset_id, ZendeskAsset.deleted_at.is_(None))
        .with_for_update()
    )
    if asset is None:
        raise AssetNotFound(f"asset {asset_id} not found")
    if connector is not None:
        rules, default = rules_of(connector)
        named = {pair.template_id for pair in rules} | {pair.scene_id for pair in rules}
        if default is not None:
            named |= {default.template_id, default.scene_id}
        if asset.id in named:
            raise AssetInUse(f"asset {asset_id} is named by the rules or the default; change them first")
    asset.deleted_at = func.now()
    session.flush()
    key = asset.storage_key
    after_commit(session, lambda: storage.delete(key))
    audit.record(
        session,
        context=context,
        action="zendesk.asset.delete",
        target_type="zendesk_asset",
        target_id=asset.id,
        tenant_id=tenant.id,
        before={"kind": asset.kind, "name": asset.name, "sha256": data_hash(asset)},
    )


def live_asset(session: Session, *, tenant_id: int, asset_id: int, kind: AssetKind) -> ZendeskAsset | None:
    """An asset a rule names, if it is still the tenant's, live and of this kind (shared, not to be deleted while
    the ticket's transaction uses it)."""
    return session.scalar(
        within_tenant(select(ZendeskAsset), ZendeskAsset.tenant_id, tenant_scope=tenant_id)
        .where(ZendeskAsset.id == asset_id, ZendeskAsset.kind == kind.value, ZendeskAsset.deleted_at.is_(None))
        .with_for_update(read=True)
    )


# --- tickets -----------------------------------------------------------------------------------------------------


def list_tickets(
    session: Session,
    *,
    tenant_id: int,
    tenant_scope: int | None,
    status: TicketStatus | None,
    before_id: int | None,
    limit: int,
) -> list[TicketRead]:
    """Newest first, with each ticket's job by its public id."""
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    query = within_tenant(
        select(ZendeskTicket, Job.public_id).outerjoin(Job, Job.id == ZendeskTicket.job_id),
        ZendeskTicket.tenant_id,
        tenant_scope=tenant.id,
    )
    if status is not None:
        query = query.where(ZendeskTicket.status == status.value)
    rows = session.execute(newest_first(query, ZendeskTicket.id, before_id=before_id, limit=limit)).all()
    return [
        TicketRead(
            id=ticket.id,
            tenant_id=ticket.tenant_id,
            zendesk_ticket_id=ticket.zendesk_ticket_id,
            event=ticket.event,
            status=TicketStatus(ticket.status),
            reason=ticket.reason,
            matched_by=ticket.matched_by,
            template_id=ticket.template_id,
            scene_id=ticket.scene_id,
            job_id=job_public_id,
            cached=ticket.result_id is not None and ticket.job_id is None,
            attempts=ticket.attempts,
            last_error=ticket.last_error,
            received_at=ticket.received_at,
            replied_at=ticket.replied_at,
        )
        for ticket, job_public_id in rows
    ]
