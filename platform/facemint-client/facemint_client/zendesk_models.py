"""Response models of the Zendesk connector's admin API (`client.admin.zendesk`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class ZendeskConnector:
    """A tenant's connector. Its credentials are never shown: `api_token_fingerprint` and
    `signing_secret_fingerprint` (None until set) say which are stored. Point the Zendesk webhook at
    `webhook_url`."""

    tenant_id: int
    connector_id: str
    webhook_url: str
    base_url: str
    api_email: str
    api_token_fingerprint: str
    signing_secret_fingerprint: str | None
    credentials_key_id: str
    integration_user_id: int
    enabled: bool
    processors: list[str]
    reply_body: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class ZendeskAssetPair:
    """A template (the face) and a scene (where it goes), by asset id."""

    template_id: int
    scene_id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ZendeskRule(ZendeskAssetPair):
    """A ticket matches when every condition set holds: one of `subject_keywords` is a word of its subject, one of
    `tags` is among its tags, its group is `group_id`."""

    subject_keywords: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    group_id: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ZendeskRules:
    """The rules in order (the first a ticket matches wins) and the `default` for a ticket none matches (None: such
    a ticket is skipped, nothing charged)."""

    rules: list[ZendeskRule]
    default: ZendeskAssetPair | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ZendeskAsset:
    id: int
    tenant_id: int
    kind: str  # template | scene
    name: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class ZendeskTicket:
    """A ticket the webhook delivered: what it matched, its job (`job_id`; None when the result came from the
    cache) and its reply."""

    id: int
    tenant_id: int
    zendesk_ticket_id: int
    event: str
    status: str
    reason: str | None
    matched_by: str | None
    template_id: int | None
    scene_id: int | None
    job_id: str | None
    cached: bool
    attempts: int
    last_error: str | None
    received_at: datetime
    replied_at: datetime | None
