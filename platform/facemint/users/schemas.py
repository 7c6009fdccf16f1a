from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from facemint.users.orm import Role, UserStatus

Email = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=3, max_length=320)]


def _check_email(value: str) -> str:
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or " " in value or domain.startswith("."):
        raise ValueError("not an email address")
    return value


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Email
    role: Role = Role.member
    tenant_id: int | None = None
    name: Annotated[str | None, StringConstraints(max_length=200)] = None
    password: Annotated[str | None, Field(min_length=8, max_length=1024)] = None

    _email = field_validator("email")(_check_email)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str | None, StringConstraints(max_length=200)] = None
    role: Role | None = None
    password: Annotated[str | None, Field(min_length=8, max_length=1024)] = None


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    tenant_id: int | None
    email: str
    name: str | None
    role: Role
    status: UserStatus
    created_at: datetime
    updated_at: datetime
