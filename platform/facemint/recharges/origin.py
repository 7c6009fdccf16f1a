"""Who asked for a recharge and where its tokens come from: shared by single recharges, batches and approving
a held one. Platform admins and operators create tokens (from the issuance account); a tenant admin hands out
tokens from its tenant's pool and never more than the pool holds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from billing.errors import InsufficientTokens
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind
from facemint.auth.principal import Principal
from facemint.tenants.orm import Tenant


@dataclass(frozen=True, slots=True)
class Source:
    account_id: int
    tracked: bool
    tenant_id: int | None


@dataclass(frozen=True, slots=True)
class Origin:
    """Who asked for a recharge: it decides where the tokens come from and which users a batch may reach. An
    approved recharge is applied as its requester asked, not as its approver would have."""

    user_id: int
    api_key_id: int | None
    is_staff: bool
    tenant_id: int | None
    label: str

    @classmethod
    def of(cls, principal: Principal) -> Origin:
        return cls(
            user_id=principal.user_id,
            api_key_id=principal.api_key_id,
            is_staff=principal.is_staff,
            tenant_id=principal.tenant_id,
            label=principal.label,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Origin:
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def tenant_scope(self) -> int | None:
        return None if self.is_staff else self.tenant_id


def key_scope(principal: Principal | Origin) -> str:
    # Idempotency keys are the caller's namespace: two tenants can both send "2026-11-batch-1".
    return "platform" if principal.is_staff else f"tenant:{principal.tenant_id}"


def source_for(session: Session, principal: Principal | Origin) -> Source:
    if principal.is_staff:
        return Source(
            account_id=ledger.system_account_id(session, kind=AccountKind.issuance),
            tracked=False,
            tenant_id=None,
        )
    assert principal.tenant_id is not None
    tenant = session.get(Tenant, principal.tenant_id)
    assert tenant is not None
    return Source(account_id=tenant.pool_account_id, tracked=True, tenant_id=tenant.id)


def ensure_pool_covers(session: Session, source: Source, amount: int, *, what: str = "this") -> None:
    if not source.tracked:
        return
    pool = ledger.get_balance(session, account_id=source.account_id)
    if amount > pool.available:
        raise InsufficientTokens(
            f"the pool holds {pool.available} tokens; {what} needs {amount}", needed=amount, available=pool.available
        )
