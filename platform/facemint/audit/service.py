"""Audit events: written in the same transaction as the admin write they describe."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint import tenancy
from facemint.audit.orm import AuditEvent
from facemint.audit.schemas import AuditEventRead
from facemint.context import RequestContext
from facemint.pagination import newest_first
from facemint.tenancy import within_tenant


def record(
    session: Session,
    *,
    context: RequestContext | None,
    action: str,
    target_type: str,
    target_id: object | None,
    tenant_id: int | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            # No context: the command line (e.g. `facemint admin bootstrap`), run by whoever holds the server.
            actor_user_id=context.principal.user_id if context else None,
            actor_api_key_id=context.principal.api_key_id if context else None,
            tenant_id=tenant_id,
            action=action,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            request_id=context.request_id if context else None,
            ip=_inet(context.ip) if context else None,
            before=before,
            after=after,
        )
    )


def _inet(ip: str) -> str | None:
    """The address as the inet column takes it; None for anything that is not one (a test client's name,
    "unknown", a garbled X-Forwarded-For hop), so a bad address never fails the write it describes."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def list_events(
    session: Session,
    *,
    tenant_scope: int | None,
    tenant_id: int | None,
    action: str | None,
    actor_user_id: int | None,
    target_type: str | None,
    target_id: str | None,
    before_id: int | None,
    limit: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[AuditEvent]:
    """Newest first; `start` inclusive and `end` exclusive bound `occurred_at`."""
    query = within_tenant(select(AuditEvent), AuditEvent.tenant_id, tenant_scope=tenant_scope, tenant_id=tenant_id)
    if action:
        query = query.where(AuditEvent.action == action)
    if actor_user_id is not None:
        query = query.where(AuditEvent.actor_user_id == actor_user_id)
    if target_type:
        query = query.where(AuditEvent.target_type == target_type)
    if target_id:
        query = query.where(AuditEvent.target_id == target_id)
    if start is not None:
        query = query.where(AuditEvent.occurred_at >= start)
    if end is not None:
        query = query.where(AuditEvent.occurred_at < end)
    query = newest_first(query, AuditEvent.id, before_id=before_id, limit=limit)
    return list(session.scalars(query))


def read(event: AuditEvent, *, tenant_scope: int | None) -> AuditEventRead:
    """An event as a reader of `tenant_scope` may see it (`tenancy.redact_audit_after`). The row itself is never
    changed: the audit trail is append-only."""
    item = AuditEventRead.model_validate(event)
    return item.model_copy(update={"after": tenancy.redact_audit_after(item.after, tenant_scope)})
