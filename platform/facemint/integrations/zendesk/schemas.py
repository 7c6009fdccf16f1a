"""The connector's admin API bodies and answers, and the webhook's answer."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator, model_validator

from facemint.integrations.zendesk.orm import AssetKind, TicketStatus

BIGINT = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=BIGINT)]
SUBDOMAIN_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
DEFAULT_REPLY = "Here is your personalised avatar."
# What a webhook names, and how much of it is kept.
MAX_SUBJECT = 1000
MAX_TAGS = 200
MAX_TAG = 80

Keyword = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=MAX_TAG)]
Processor = Literal["face_swapper", "face_enhancer"]
Credential = Annotated[SecretStr, Field(min_length=1, max_length=500)]
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class ConnectorWrite(BaseModel):
    """The whole connector: `PUT` creates or replaces it. The API token is required the first time; the signing
    secret once Zendesk has made it (the webhook in Zendesk needs this connector's URL first; until the secret is
    set, every webhook is refused). Either is kept when left out later; neither is ever shown again."""

    model_config = ConfigDict(extra="forbid")
    subdomain: Annotated[
        str | None, Field(max_length=63, pattern=SUBDOMAIN_PATTERN, description="`acme` for acme.zendesk.com")
    ] = None
    base_url: Annotated[
        str | None,
        Field(max_length=200, description="instead of `subdomain`: only a base URL the settings allow (tests)"),
    ] = None
    api_email: Annotated[str, Field(min_length=3, max_length=254, description="the agent the replies come from")]
    api_token: Annotated[Credential | None, Field(description="a Zendesk API token; write-only")] = None
    signing_secret: Annotated[Credential | None, Field(description="the webhook's signing secret; write-only")] = None
    integration_user_id: Annotated[Id, Field(description="the tenant's user whose tokens pay for the swaps")]
    enabled: bool = True
    processors: Annotated[list[Processor], Field(min_length=1, max_length=2)] = ["face_swapper"]
    reply_body: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] = DEFAULT_REPLY

    @model_validator(mode="after")
    def _one_address(self) -> ConnectorWrite:
        if (self.subdomain is None) == (self.base_url is None):
            raise ValueError("name exactly one of `subdomain` and `base_url`")
        return self

    @field_validator("api_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError("not an email address")
        return value.strip().lower()


class ConnectorRead(BaseModel):
    tenant_id: int
    connector_id: str = Field(description="the webhook URL's path segment")
    webhook_url: str = Field(description="what the Zendesk webhook's endpoint URL must be")
    base_url: str
    api_email: str
    api_token_fingerprint: str = Field(description="the first 16 hex digits of the token's SHA-256; never the token")
    signing_secret_fingerprint: str | None = Field(description="none until the signing secret is set")
    credentials_key_id: str = Field(description="the key id the credentials are sealed with")
    integration_user_id: int
    enabled: bool
    processors: list[str]
    reply_body: str
    created_at: datetime
    updated_at: datetime


class AssetPair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template_id: Id
    scene_id: Id


class RuleWrite(AssetPair):
    """A ticket matches when every condition the rule sets holds: one of `subject_keywords` is a word of its
    subject (any case), one of `tags` is among its tags, its group is `group_id`."""

    subject_keywords: Annotated[list[Keyword], Field(max_length=50)] = []
    tags: Annotated[list[Tag], Field(max_length=50)] = []
    group_id: Id | None = None

    @model_validator(mode="after")
    def _some_condition(self) -> RuleWrite:
        if not self.subject_keywords and not self.tags and self.group_id is None:
            raise ValueError("a rule needs a condition (subject_keywords, tags or group_id); use `default` for none")
        return self


class RulesWrite(BaseModel):
    """The rules in order (the first a ticket matches wins) and the default for a ticket none matches (none: such
    a ticket is skipped, and nothing is charged)."""

    model_config = ConfigDict(extra="forbid")
    rules: Annotated[list[RuleWrite], Field(max_length=100)]
    default: AssetPair | None = None


class RulesRead(BaseModel):
    rules: list[RuleWrite]
    default: AssetPair | None


class AssetRead(BaseModel):
    id: int
    tenant_id: int
    kind: AssetKind
    name: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha256: str
    created_at: datetime


class AssetList(BaseModel):
    items: list[AssetRead]


class TicketRead(BaseModel):
    id: int
    tenant_id: int
    zendesk_ticket_id: int
    event: str
    status: TicketStatus
    reason: str | None
    matched_by: str | None
    template_id: int | None
    scene_id: int | None
    job_id: str | None = Field(description="the swap's job (public id); none when the result came from the cache")
    cached: bool
    attempts: int
    last_error: str | None
    received_at: datetime
    replied_at: datetime | None


class WebhookAnswer(BaseModel):
    status: Literal["accepted", "duplicate", "skipped", "ignored"]
    ticket_id: int | None = Field(default=None, description="Zendesk's ticket id")
    detail: str | None = None
