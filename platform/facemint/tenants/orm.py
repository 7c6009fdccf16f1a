from __future__ import annotations

import base64
import secrets
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Identity, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


def new_webhook_secret() -> str:
    """Standard Webhooks format: `whsec_` + base64 of 32 random bytes (the HMAC key)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class TenantStatus(StrEnum):
    active = "active"
    suspended = "suspended"


class Plan(StrEnum):
    free = "free"
    pro = "pro"
    enterprise = "enterprise"


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
        CheckConstraint("plan IN ('free', 'pro', 'enterprise')", name="plan"),
        CheckConstraint("length(btrim(name)) > 0", name="name_not_blank"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(Text, server_default="active")
    plan: Mapped[str] = mapped_column(Text, server_default="free")
    # The tenant's token pool: tenant admins hand out tokens from it.
    pool_account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_accounts.id"), unique=True)
    # Signs this tenant's webhooks (Standard Webhooks: `whsec_` + base64 of 32 random bytes).
    webhook_secret: Mapped[str] = mapped_column(Text, default=new_webhook_secret)
    # Where account events (low balance, abuse) are sent; None: the tenant receives none.
    events_webhook_url: Mapped[str | None] = mapped_column(Text)
    # Moves on with every change to the tenant's abuse rules (facemint.abuse.service), so the Redis copy of the
    # rules is only ever replaced by a newer one.
    abuse_rules_version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
