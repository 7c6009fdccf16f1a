from __future__ import annotations

from datetime import datetime
from typing import Annotated, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from billing.grants.schemas import Period
from facemint.grants.orm import DEFAULT_GRANT_PRIORITY, Funding, GrantScope
from facemint.tenants.orm import Plan
from facemint.users.schemas import Label

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Tokens = Annotated[int, Field(gt=0, lt=2**63)]
Priority = Annotated[int, Field(ge=0, le=100)]


class GrantCreate(BaseModel):
    """A recurring grant. `scope` `plan`: every user of every tenant on `plan`, issued by the platform (`funding`
    `platform`, no label). `scope` `tenant`: the users of `tenant_id` (a tenant admin's own tenant when omitted),
    only those carrying `label` when given, issued by the platform (staff only) or paid from the tenant's pool.
    A platform-funded grant is made only once a second operator approves it (202 with the approval until then)."""

    model_config = ConfigDict(extra="forbid")
    name: Name
    scope: GrantScope
    plan: Plan | None = None
    tenant_id: Annotated[int | None, Field(gt=0, lt=2**63)] = None
    label: Label | None = None
    amount: Tokens
    period: Period
    priority: Priority = DEFAULT_GRANT_PRIORITY
    funding: Funding
    enabled: bool = True
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.scope is GrantScope.plan:
            if self.plan is None:
                raise ValueError("a plan grant names its plan")
            if self.tenant_id is not None or self.label is not None:
                raise ValueError("a plan grant names no tenant_id and no label (it is for every user on the plan)")
            if self.funding is not Funding.platform:
                raise ValueError("a plan grant is issued by the platform (funding platform): it spans tenants' pools")
        elif self.plan is not None:
            raise ValueError("a tenant grant names no plan")
        if self.starts_at is not None and self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class GrantUpdate(BaseModel):
    """What may change on a grant; a field left out stays. Its scope, plan, tenant, period and funding never
    change (make a new grant). A change applies from the next run: accounts already granted this period keep
    what they got. A change that lets a platform-funded grant mint more (a larger `amount`, `enabled` again, its
    `label` changed or cleared, an earlier `starts_at`, a later or no `ends_at`) waits for a second operator's
    approval, the grant running on its current terms until then."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    label: Label | None = None  # null: every user of the tenant
    amount: Tokens | None = None
    priority: Priority | None = None
    enabled: bool | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None  # null: no end


class GrantRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    scope: GrantScope
    plan: Plan | None
    tenant_id: int | None
    label: str | None
    amount: int
    period: Period
    priority: int
    funding: Funding
    enabled: bool
    starts_at: datetime
    ends_at: datetime | None
    created_by: str | None
    approval_id: int | None = Field(
        description="the four-eyes approval whose terms the grant last took (null: none was needed)"
    )
    created_at: datetime
    updated_at: datetime


class GrantPeriodRead(BaseModel):
    """One period of a grant as the workers left it: accounts and tokens granted, and the last shortfall of a
    pool-funded run that the pool could not pay (null once a run succeeds)."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    grant_id: int
    period_start: datetime
    period_end: datetime
    granted_accounts: int
    granted_tokens: int
    shortfall_needed: int | None
    shortfall_available: int | None
    shortfall_at: datetime | None
    updated_at: datetime
