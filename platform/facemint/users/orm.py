from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Identity, Index, Integer, Text, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from facemint.db import Base


class Role(StrEnum):
    platform_admin = "platform_admin"
    operator = "operator"
    finance = "finance"
    tenant_admin = "tenant_admin"
    member = "member"


STAFF_ROLES = frozenset({Role.platform_admin, Role.operator, Role.finance})
# Labels a tenant gives its users ("vip"), which a tenant's recurring grants may select on (facemint.grants).
MAX_LABELS = 16


class UserStatus(StrEnum):
    active = "active"
    frozen = "frozen"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('platform_admin', 'operator', 'finance', 'tenant_admin', 'member')", name="role"),
        CheckConstraint("status IN ('active', 'frozen')", name="status"),
        # Emails are stored lower-cased, so the unique index is case-insensitive.
        CheckConstraint("email = lower(email)", name="email_lowercase"),
        # Platform staff belong to no tenant; everyone else to exactly one.
        CheckConstraint(
            "(role IN ('platform_admin', 'operator', 'finance')) = (tenant_id IS NULL)", name="tenant_by_role"
        ),
        CheckConstraint("(totp_secret IS NULL) = (totp_enrolled_at IS NULL)", name="totp_enrolled"),
        # The console's search by the start of an email (LIKE 'prefix%'; migration 0007).
        Index("ix_users_email_pattern", "email", postgresql_ops={"email": "text_pattern_ops"}),
        CheckConstraint(f"cardinality(labels) <= {MAX_LABELS}", name="labels_count"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("tenants.id"), index=True)
    email: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="active")
    password_hash: Mapped[str | None] = mapped_column(Text)
    # Bumped whenever what the user may do changes (password, role, status, signing out everywhere): access
    # tokens carry the version they were issued under and die when it moves on.
    credentials_version: Mapped[int] = mapped_column(Integer, server_default="1")
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ledger_accounts.id"), unique=True)
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    # The console's second factor (RFC 6238, base32), once enrolled: signing in and approving need a current code.
    totp_secret: Mapped[str | None] = mapped_column(Text)
    totp_enrolled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
