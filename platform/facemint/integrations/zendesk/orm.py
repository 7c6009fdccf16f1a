"""A tenant's Zendesk connector (settings, sealed credentials, rules), its allow-listed images, the results cache
and the tickets handled. Rows are never deleted (an asset is retired with `deleted_at`)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


class AssetKind(StrEnum):
    template = "template"  # a source face: the avatar's
    scene = "scene"  # a target image: where the face goes


class ResultStatus(StrEnum):
    pending = "pending"  # its job is queued or running (or settled, and its result not copied yet)
    ready = "ready"  # stored under `storage_key`: every later ticket reuses it
    failed = "failed"  # its job failed: the next ticket submits a new one


class TicketStatus(StrEnum):
    skipped = "skipped"  # nothing ran and nothing was charged: `reason` says why
    swapping = "swapping"  # waiting for its result's job to settle
    replying = "replying"  # the result is there: the reply is due at `next_attempt_at`
    replied = "replied"
    failed = "failed"  # the swap failed, or the reply did: `reason`, `last_error`


class ZendeskAsset(Base):
    __tablename__ = "zendesk_assets"
    __table_args__ = (
        CheckConstraint("kind IN ('template', 'scene')", name="kind"),
        CheckConstraint("length(btrim(name)) > 0", name="name_not_blank"),
        Index("ix_zendesk_assets_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    # Where the image is stored: a key the service makes (integrations/zendesk/<tenant>/assets/<random>.<ext>).
    storage_key: Mapped[str] = mapped_column(Text, unique=True)
    content_type: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[bytes] = mapped_column(LargeBinary)  # of the image's bytes: part of a result's content hash
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ZendeskConnector(Base):
    __tablename__ = "zendesk_connectors"
    __table_args__ = (
        CheckConstraint("jsonb_typeof(rules) = 'array'", name="rules_array"),
        CheckConstraint("(default_template_id IS NULL) = (default_scene_id IS NULL)", name="default_pair"),
        CheckConstraint("cardinality(processors) > 0", name="processors_not_empty"),
        CheckConstraint(
            "(signing_secret_sealed IS NULL) = (signing_secret_fingerprint IS NULL)", name="signing_secret_pair"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # The webhook URL's path segment (`zdc_` + 24 hex): unguessable, so the URL says nothing about the tenant.
    public_id: Mapped[str] = mapped_column(Text, unique=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tenants.id"), unique=True)
    # https://<subdomain>.zendesk.com, or a base URL the settings allow (tests).
    base_url: Mapped[str] = mapped_column(Text)
    api_email: Mapped[str] = mapped_column(Text)
    # Sealed (facemint.integrations.credentials), each bound to this tenant and field; the API shows fingerprints.
    api_token_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    api_token_fingerprint: Mapped[str] = mapped_column(Text)
    # None until the webhook exists in Zendesk (which makes the secret): until then every webhook is refused.
    signing_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    signing_secret_fingerprint: Mapped[str | None] = mapped_column(Text)
    # The tenant's user whose tokens pay for the swaps.
    integration_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    processors: Mapped[list[str]] = mapped_column(ARRAY(Text))
    reply_body: Mapped[str] = mapped_column(Text)
    # Ordered: the first rule a ticket matches picks its template and scene (schemas.RuleWrite); else the default.
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    default_template_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("zendesk_assets.id"))
    default_scene_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("zendesk_assets.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ZendeskResult(Base):
    """The results cache: one swap per (tenant, content hash of template bytes, scene bytes and processors)."""

    __tablename__ = "zendesk_results"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'ready', 'failed')", name="status"),
        CheckConstraint("(status = 'ready') = (storage_key IS NOT NULL)", name="ready_iff_stored"),
        # At most one live entry per content: a failed one steps aside for the next try.
        Index(
            "uq_zendesk_results_tenant_id_content_hash",
            "tenant_id",
            "content_hash",
            unique=True,
            postgresql_where=text("status <> 'failed'"),
        ),
        Index("ix_zendesk_results_pending", "job_id", postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tenants.id"))
    content_hash: Mapped[bytes] = mapped_column(LargeBinary)
    template_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("zendesk_assets.id"))
    scene_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("zendesk_assets.id"))
    processors: Mapped[list[str]] = mapped_column(ARRAY(Text))
    job_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("jobs.id"))
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    # A copy of the job's result under integrations/ (a job's own result expires with it).
    storage_key: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ZendeskTicket(Base):
    """One ticket event a signed webhook delivered, and what became of it. Unique per (connector, ticket, event):
    a replayed webhook finds its row and does nothing."""

    __tablename__ = "zendesk_tickets"
    __table_args__ = (
        UniqueConstraint("connector_id", "zendesk_ticket_id", "event", name="uq_zendesk_tickets_ticket_event"),
        CheckConstraint("status IN ('skipped', 'swapping', 'replying', 'replied', 'failed')", name="status"),
        CheckConstraint("(status = 'replied') = (replied_at IS NOT NULL)", name="replied_iff_stamped"),
        CheckConstraint("status NOT IN ('swapping', 'replying', 'replied') OR result_id IS NOT NULL", name="result"),
        CheckConstraint("zendesk_ticket_id > 0", name="ticket_id_positive"),
        Index("ix_zendesk_tickets_tenant_id_id", "tenant_id", "id"),
        # The reply sender's claims and the settled swaps it looks for.
        Index("ix_zendesk_tickets_due", "next_attempt_at", postgresql_where=text("status = 'replying'")),
        Index("ix_zendesk_tickets_swapping", "result_id", postgresql_where=text("status = 'swapping'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tenants.id"))
    connector_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("zendesk_connectors.id"))
    zendesk_ticket_id: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    group_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    matched_by: Mapped[str | None] = mapped_column(Text)  # "rule 2", "default"
    template_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("zendesk_assets.id"))
    scene_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("zendesk_assets.id"))
    result_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("zendesk_results.id"))
    job_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("jobs.id"))  # None: served from the cache
    # The reply's progress, so a rerun never posts twice: the upload (its token, and the attachment it made, looked
    # for among the ticket's comments before a PUT is sent again) and when a PUT was first sent.
    upload_token: Mapped[str | None] = mapped_column(Text)
    attachment_id: Mapped[int | None] = mapped_column(BigInteger)
    uploaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    put_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The sender holding the reply until `next_attempt_at` (a claim moves it to the lease's end).
    lease_token: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    replied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
