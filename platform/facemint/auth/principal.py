"""Who is calling: resolved once per request from a JWT or an API key."""

from __future__ import annotations

from dataclasses import dataclass

from facemint import tenancy
from facemint.auth.scopes import Scope
from facemint.errors import NotFound
from facemint.users.orm import STAFF_ROLES, Role


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    email: str
    role: Role
    tenant_id: int | None
    account_id: int
    plan: str
    scopes: frozenset[Scope]
    api_key_id: int | None = None
    api_key_public_id: str | None = None

    @property
    def is_staff(self) -> bool:
        """Platform admins, operators and finance work across tenants."""
        return self.role in STAFF_ROLES

    @property
    def tenant_scope(self) -> int | None:
        """None for staff (every tenant); the caller's tenant for everyone else."""
        return None if self.is_staff else self.tenant_id

    @property
    def label(self) -> str:
        return f"key:{self.api_key_id}" if self.api_key_id else f"user:{self.user_id}"

    @property
    def rate_limit_subject(self) -> str:
        # The key's public id or the user id, never the plaintext key.
        return f"key:{self.api_key_public_id}" if self.api_key_public_id else f"user:{self.user_id}"

    def ensure_tenant_visible(self, tenant_id: int | None, *, what: str) -> None:
        """Another tenant's objects answer 404, as if they did not exist (the rule is `facemint.tenancy`'s)."""
        tenancy.ensure_visible(self.tenant_scope, tenant_id, not_found=NotFound(f"{what} not found"))
