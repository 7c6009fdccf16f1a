from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from facemint.tenants.orm import Plan, TenantStatus

TenantName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: TenantName
    plan: Plan = Plan.free


class TenantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: TenantName | None = None
    plan: Plan | None = None
    status: TenantStatus | None = None


class TenantRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    status: TenantStatus
    plan: Plan
    events_webhook_url: str | None = None
    pool_account_id: int = Field(exclude=True)
    created_at: datetime
    updated_at: datetime
