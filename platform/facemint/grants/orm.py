from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base

# Below paid recharges (50): free credit that expires burns before tokens someone paid for.
DEFAULT_GRANT_PRIORITY = 10


class GrantScope(StrEnum):
    plan = "plan"  # every user of every tenant on the plan
    tenant = "tenant"  # the tenant's users, or those carrying `label`


class Funding(StrEnum):
    platform = "platform"  # new tokens, from the issuance account
    tenant_pool = "tenant_pool"  # handed on from the tenant's pool


class CreditGrant(Base):
    """A recurring grant's definition. Its scope, plan, tenant, period and funding never change (a new grant is made
    instead): each decides what an award's (grant, period, account) key means. `approval_id` is the four-eyes
    approval whose terms it last took: a platform-funded grant is made, and may mint more, only from one (a
    deferred trigger, migration 0016, checks it at commit; `facemint.grants.approving`)."""

    __tablename__ = "credit_grants"
    __table_args__ = (
        CheckConstraint("scope IN ('plan', 'tenant')", name="scope"),
        CheckConstraint("period IN ('day', 'week', 'month')", name="period"),
        CheckConstraint("funding IN ('platform', 'tenant_pool')", name="funding"),
        CheckConstraint("plan IN ('free', 'pro', 'enterprise')", name="plan"),
        CheckConstraint("(scope = 'plan') = (plan IS NOT NULL)", name="plan_iff_plan_scope"),
        CheckConstraint("(scope = 'tenant') = (tenant_id IS NOT NULL)", name="tenant_iff_tenant_scope"),
        # A plan spans tenants: no one tenant's pool or labels can stand for it.
        CheckConstraint("scope = 'tenant' OR (funding = 'platform' AND label IS NULL)", name="plan_grant_terms"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("priority BETWEEN 0 AND 100", name="priority_range"),
        CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="ends_after_start"),
        CheckConstraint("length(btrim(name)) > 0", name="name_not_blank"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    plan: Mapped[str | None] = mapped_column(Text)
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("tenants.id"), index=True)
    label: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, server_default=str(DEFAULT_GRANT_PRIORITY))
    funding: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default="true")
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str | None] = mapped_column(Text)
    approval_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("recharge_approvals.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class CreditGrantPeriod(Base):
    """What the workers did for one grant and period: the accounts and tokens granted so far (the sum of its
    awards, `billing.grants`), and the last shortfall of a pool-funded grant whose pool could not pay a run (the
    next run retries it; a successful run clears it). Written only by runs that had accounts to grant."""

    __tablename__ = "credit_grant_periods"
    __table_args__ = (
        UniqueConstraint("grant_id", "period_start"),
        CheckConstraint("period_end > period_start", name="ends_after_start"),
        CheckConstraint("granted_accounts >= 0 AND granted_tokens >= 0", name="granted_nonnegative"),
        CheckConstraint("(shortfall_needed IS NULL) = (shortfall_at IS NULL)", name="shortfall_complete"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    grant_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("credit_grants.id"))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    granted_accounts: Mapped[int] = mapped_column(Integer, server_default="0")
    granted_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The tokens the last refused run needed, and what the pool had then.
    shortfall_needed: Mapped[int | None] = mapped_column(BigInteger)
    shortfall_available: Mapped[int | None] = mapped_column(BigInteger)
    shortfall_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
