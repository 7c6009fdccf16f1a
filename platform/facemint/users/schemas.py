from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from facemint.users.orm import MAX_LABELS, Role, UserStatus

Email = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=3, max_length=320)]
_LABEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _check_label(value: str) -> str:
    if not _LABEL.match(value):
        raise ValueError("a label is 1 to 32 letters, digits, '_' or '-', starting with a letter or digit")
    return value


# A user label ("vip", "beta-testers"), stored lower-cased: letters, digits, `_` and `-`, starting with a letter or
# digit. (Checked after lower-casing: a pattern constraint would see the input as sent.)
Label = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True), AfterValidator(_check_label)]
Labels = Annotated[list[Label], Field(max_length=MAX_LABELS)]


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
    labels: Labels = Field(default_factory=list)

    _email = field_validator("email")(_check_email)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str | None, StringConstraints(max_length=200)] = None
    role: Role | None = None
    password: Annotated[str | None, Field(min_length=8, max_length=1024)] = None
    labels: Labels | None = None  # the whole set, replacing the user's labels


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    tenant_id: int | None
    email: str
    name: str | None
    role: Role
    status: UserStatus
    labels: list[str]
    created_at: datetime
    updated_at: datetime
