"""A ticket's way in: the signed webhook, checked before anything runs, then recorded once per (connector, ticket,
event), matched against the tenant's rules, and either served from the results cache or swapped as a metered job
of the connector's integration user through the ordinary submit flow (`facemint.jobs.submission.submit_swap`:
held now, captured when the worker succeeds, released if it fails). All in the request's transaction, which the
boundary commits; the job is queued after the commit, as every submit is. The reply is the worker's
(`facemint.integrations.zendesk.replies`), once the swap has settled.

What is charged: one job per distinct content (template bytes, scene bytes, processors and options). A ticket whose
content has a stored result, or a job in flight, waits for that one and costs nothing. A ticket no rule matches,
one of a disabled connector, or one whose payer cannot pay is recorded as skipped, audited, and charged nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from billing.errors import InsufficientTokens
from facemint import tenancy
from facemint.audit import service as audit
from facemint.auth import service as auth_service
from facemint.auth.principal import Principal
from facemint.config import Settings
from facemint.integrations.credentials import CredentialUnreadable
from facemint.integrations.zendesk import rules, service, signature
from facemint.integrations.zendesk.errors import ConnectorUnavailable, InvalidWebhookSignature
from facemint.integrations.zendesk.orm import (
    AssetKind,
    ResultStatus,
    TicketStatus,
    ZendeskAsset,
    ZendeskConnector,
    ZendeskResult,
    ZendeskTicket,
)
from facemint.integrations.zendesk.schemas import WebhookAnswer
from facemint.jobs import service as jobs
from facemint.jobs import submission
from facemint.jobs.orm import Job, JobStatus
from facemint.storage import ObjectMissing, Storage, input_prefix
from facemint.tenants.errors import TenantSuspended
from facemint.tenants.orm import Tenant, TenantStatus
from facemint.users.errors import UserFrozen
from facemint.users.orm import User

logger = logging.getLogger("facemint.integrations.zendesk")
_PUBLIC_ID = re.compile(r"^zdc_[0-9a-f]{24}$")
# Refused signatures all read alike to the sender: an unknown connector is not told apart from a wrong secret.
_REFUSED = "the webhook's signature is not valid for this endpoint"
# The swap a ticket runs: the largest face of the scene gets the template's. Part of a result's content hash.
SWAP_OPTIONS: dict[str, Any] = {
    "faces": "largest",
    "threshold": 0.5,
    "has_reference": False,
    "output_format": "png",
    "quality": 90,
}


@dataclass(frozen=True, slots=True)
class Services:
    """What a ticket's swap needs beyond the session (the submit flow's own dependencies)."""

    settings: Settings
    redis: Redis
    sessions: sessionmaker[Session]
    storage: Storage


def verify(
    session: Session, *, settings: Settings, connector_id: str, headers: Mapping[str, str], body: bytes
) -> ZendeskConnector:
    """The connector the webhook is for, if its signature is Zendesk's, with this connector's secret, over this
    body, and fresh; InvalidWebhookSignature (401) otherwise, before anything is written."""
    connector = None
    if _PUBLIC_ID.match(connector_id):
        connector = service.connector_by_public_id(session, public_id=connector_id)
    if connector is None:
        logger.warning("zendesk webhook for an unknown connector refused")
        raise InvalidWebhookSignature(_REFUSED)
    try:
        secret = service.signing_secret(connector, settings=settings)
    except CredentialUnreadable as exc:
        logger.error("zendesk connector %s: the signing secret cannot be opened: %s", connector.public_id, exc)
        raise ConnectorUnavailable("the connector's credentials cannot be opened; retry later") from exc
    if secret is None:
        logger.warning("zendesk webhook for connector %s refused: no signing secret set yet", connector.public_id)
        raise InvalidWebhookSignature("the connector has no signing secret yet: set the webhook's secret first")
    reason = signature.check(
        secret,
        signature=headers.get(signature.SIGNATURE_HEADER),
        timestamp=headers.get(signature.TIMESTAMP_HEADER),
        body=body,
        tolerance_seconds=settings.zendesk_webhook_tolerance_seconds,
    )
    if reason is not None:
        logger.warning("zendesk webhook for connector %s refused: %s", connector.public_id, reason)
        raise InvalidWebhookSignature(_REFUSED if reason == signature.MISMATCH else reason)
    return connector


def receive(
    session: Session, *, services: Services, connector: ZendeskConnector, body: bytes, request_id: str | None
) -> WebhookAnswer:
    """A verified webhook: record the ticket once, then skip it, serve it from the cache or submit its swap."""
    event = rules.parse_event(body)
    if event.event is None:
        return WebhookAnswer(status="ignored", ticket_id=event.ticket_id, detail="not a ticket.created event")
    ticket = _record(session, connector, event)
    if ticket is None:
        logger.info("zendesk ticket %s (%s): a replay, ignored", event.ticket_id, event.event)
        return WebhookAnswer(status="duplicate", ticket_id=event.ticket_id, detail="this ticket event was received")
    note = {"zendesk_ticket_id": event.ticket_id, "request_id": request_id}
    if not connector.enabled:
        return _skip(session, ticket, reason="connector_disabled", note=note)
    tenant = session.get(Tenant, connector.tenant_id)
    if tenant is None or tenant.status != TenantStatus.active.value:  # not even a cached reply
        return _skip(session, ticket, reason="tenant_suspended", note=note)
    rule_list, default = service.rules_of(connector)
    match = rules.pick(rule_list, default, event)
    if match is None:
        return _skip(session, ticket, reason="no_matching_rule", note=note)
    ticket.matched_by = match.matched_by
    template = service.live_asset(
        session, tenant_id=connector.tenant_id, asset_id=match.template_id, kind=AssetKind.template
    )
    scene = service.live_asset(session, tenant_id=connector.tenant_id, asset_id=match.scene_id, kind=AssetKind.scene)
    if template is None or scene is None:  # the rules write checks them; kept for a row edited by hand
        return _skip(session, ticket, reason="asset_missing", note=note)
    ticket.template_id, ticket.scene_id = template.id, scene.id
    return _swap_or_reuse(session, services, connector, ticket, template, scene, note)


def _record(session: Session, connector: ZendeskConnector, event: rules.TicketEvent) -> ZendeskTicket | None:
    """The ticket event's row, or None when it exists (a replay: a concurrent one waits here for the first to
    commit, then finds it)."""
    inserted = session.execute(
        insert(ZendeskTicket)
        .values(
            tenant_id=connector.tenant_id,
            connector_id=connector.id,
            zendesk_ticket_id=event.ticket_id,
            event=event.event,
            subject=event.subject,
            tags=list(event.tags),
            group_id=event.group_id,
            status=TicketStatus.skipped.value,  # until decided, below, in this transaction
        )
        .on_conflict_do_nothing(constraint="uq_zendesk_tickets_ticket_event")
        .returning(ZendeskTicket.id)
    ).scalar_one_or_none()
    return None if inserted is None else session.get(ZendeskTicket, inserted)


def _skip(session: Session, ticket: ZendeskTicket, *, reason: str, note: dict[str, Any]) -> WebhookAnswer:
    ticket.status, ticket.reason = TicketStatus.skipped.value, reason
    session.flush()
    _audit(session, ticket, "zendesk.ticket.skipped", {**note, "reason": reason})
    return WebhookAnswer(status="skipped", ticket_id=ticket.zendesk_ticket_id, detail=reason)


def _audit(session: Session, ticket: ZendeskTicket, action: str, after: dict[str, Any]) -> None:
    # No request context: Zendesk acted, authenticated by its signature, not a user of ours.
    audit.record(
        session,
        context=None,
        action=action,
        target_type="zendesk_ticket",
        target_id=ticket.id,
        tenant_id=ticket.tenant_id,
        after=after,
    )


def content_hash(template: ZendeskAsset, scene: ZendeskAsset, processors: list[str]) -> bytes:
    """What makes two swaps the same: the template's and the scene's bytes (their SHA-256), the processors and
    the options."""
    digest = hashlib.sha256(b"facemint-zendesk-result-v1\0")
    digest.update(bytes(template.sha256))
    digest.update(bytes(scene.sha256))
    digest.update(json.dumps({"processors": processors, **SWAP_OPTIONS}, sort_keys=True).encode())
    return digest.digest()


def _swap_or_reuse(
    session: Session,
    services: Services,
    connector: ZendeskConnector,
    ticket: ZendeskTicket,
    template: ZendeskAsset,
    scene: ZendeskAsset,
    note: dict[str, Any],
) -> WebhookAnswer:
    processors = list(connector.processors)
    digest = content_hash(template, scene, processors)
    # Tickets of the same content wait here for each other, so exactly one of them submits the swap.
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"),
        {"lock": f"zendesk-result:{connector.tenant_id}:{digest.hex()}"},
    )
    entry = _live_result(session, connector.tenant_id, digest)
    note = {**note, "matched_by": ticket.matched_by, "template_id": template.id, "scene_id": scene.id}
    if entry is not None:
        ticket.result_id = entry.id
        if entry.status == ResultStatus.ready.value:
            ticket.status, ticket.next_attempt_at = TicketStatus.replying.value, func.now()
        else:
            ticket.status = TicketStatus.swapping.value
        session.flush()
        _audit(session, ticket, "zendesk.ticket.accepted", {**note, "cached": True, "result_id": entry.id})
        return WebhookAnswer(status="accepted", ticket_id=ticket.zendesk_ticket_id, detail="served from the cache")
    try:
        payer = _payer(session, connector)
    except (UserFrozen, TenantSuspended) as exc:
        return _skip(session, ticket, reason="integration_user_unavailable", note={**note, "detail": exc.detail})
    public_id = jobs.new_public_id()
    try:
        # A savepoint: a payer who cannot pay leaves the ticket recorded (skipped), not the request failed.
        with session.begin_nested():
            entry = ZendeskResult(
                tenant_id=connector.tenant_id,
                content_hash=digest,
                template_id=template.id,
                scene_id=scene.id,
                processors=processors,
                status=ResultStatus.pending.value,
            )
            session.add(entry)
            session.flush()
            submitted = submission.submit_swap(
                session,
                settings=services.settings,
                redis=services.redis,
                sessions=services.sessions,
                storage=services.storage,
                principal=payer,
                idempotency_key=f"zendesk-result-{entry.id}",
                swap=submission.SwapSubmission(
                    public_id=public_id,
                    files={
                        "source": services.storage.get(template.storage_key),
                        "target": services.storage.get(scene.storage_key),
                    },
                    options={**SWAP_OPTIONS, "processors": processors},
                    webhook_url=None,
                ),
            )
            entry.job_id = submitted.job.id
            session.flush()
    except (InsufficientTokens, ObjectMissing) as exc:
        services.storage.delete_prefix(input_prefix(public_id))  # the savepoint's rollback runs no hooks
        reason = "insufficient_tokens" if isinstance(exc, InsufficientTokens) else "asset_missing"
        return _skip(session, ticket, reason=reason, note=note)
    ticket.result_id, ticket.job_id, ticket.status = entry.id, submitted.job.id, TicketStatus.swapping.value
    session.flush()
    _audit(
        session,
        ticket,
        "zendesk.ticket.accepted",
        {
            **note,
            "cached": False,
            "result_id": entry.id,
            "job": submitted.job.public_id,
            "tokens_held": submitted.job.tokens_held,
        },
    )
    return WebhookAnswer(status="accepted", ticket_id=ticket.zendesk_ticket_id, detail=f"job {submitted.job.public_id}")


def _live_result(session: Session, tenant_id: int, digest: bytes) -> ZendeskResult | None:
    """The cache entry for this content, unless its job failed (then it is marked failed and a new one is due)."""
    entry = session.scalar(
        tenancy.within_tenant(select(ZendeskResult), ZendeskResult.tenant_id, tenant_scope=tenant_id).where(
            ZendeskResult.content_hash == digest, ZendeskResult.status != ResultStatus.failed.value
        )
    )
    if entry is None or entry.status != ResultStatus.pending.value or entry.job_id is None:
        return entry
    job_status = session.scalar(select(Job.status).where(Job.id == entry.job_id))
    if job_status in (JobStatus.failed.value, JobStatus.canceled.value):
        entry.status = ResultStatus.failed.value
        session.flush()
        return None
    return entry


def _payer(session: Session, connector: ZendeskConnector) -> Principal:
    """The integration user as the submit flow's principal (UserFrozen, TenantSuspended when it may not pay)."""
    user = session.get(User, connector.integration_user_id)
    assert user is not None  # a foreign key
    principal = auth_service.principal_for_user(session, user_id=user.id, credentials_version=user.credentials_version)
    if not tenancy.is_visible(connector.tenant_id, principal.tenant_id):  # checked when saved; users never move
        raise UserFrozen("the integration user is not a user of this tenant")
    return principal
