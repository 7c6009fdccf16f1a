from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from facemint.auth.scopes import Scope
from facemint.timestamps import AwareUtcDatetime


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(Scope))]
    expires_at: AwareUtcDatetime | None = None


class ApiKeyRead(BaseModel):
    id: int
    prefix: str
    name: str
    user_id: int
    tenant_id: int | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The key itself. It is shown once and cannot be recovered.")
