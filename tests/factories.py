"""Plain factory functions for tests. They go through the services (so the rows are what the product makes)
and commit, because tests run against a real, committing database."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable

from sqlalchemy.orm import Session

from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.auth.scopes import Scope, scopes_for_role
from facemint.config import Settings
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan, Tenant
from facemint.tenants.schemas import TenantCreate
from facemint.users import service as user_service
from facemint.users.orm import STAFF_ROLES, Role, User
from facemint.users.schemas import UserCreate

_counter = itertools.count(1)
PASSWORD = "correct-horse-battery"


def create_tenant(session: Session, *, name: str | None = None, plan: Plan = Plan.free) -> Tenant:
    tenant = tenant_service.create(
        session, context=None, data=TenantCreate(name=name or f"tenant-{next(_counter)}", plan=plan)
    )
    session.commit()
    return tenant


def create_user(
    session: Session,
    *,
    tenant: Tenant | None = None,
    role: Role = Role.member,
    email: str | None = None,
    password: str | None = PASSWORD,
) -> User:
    if tenant is None and role not in STAFF_ROLES:
        tenant = create_tenant(session)
    user = user_service.create(
        session,
        context=None,
        data=UserCreate(
            email=email or f"user{next(_counter)}-{uuid.uuid4().hex[:6]}@example.test",
            role=role,
            tenant_id=None if role in STAFF_ROLES else tenant.id,  # type: ignore[union-attr]
            password=password,
        ),
    )
    session.commit()
    return user


def issue_key(session: Session, settings: Settings, user: User, *, scopes: Iterable[Scope] | None = None) -> str:
    _, key = key_service.create(
        session,
        context=None,
        settings=settings,
        data=ApiKeyCreate(
            user_id=user.id, name="test", scopes=sorted(scopes if scopes is not None else scopes_for_role(user.role))
        ),
    )
    session.commit()
    return key


def fund(session: Session, *, account_id: int, amount: int) -> int:
    """Credit an account from issuance; returns the transaction id."""
    posting = ledger.transfer(
        session,
        kind=TransactionKind.recharge,
        from_account_id=ledger.system_account_id(session, kind=AccountKind.issuance),
        to_account_id=account_id,
        amount=amount,
        idempotency_key=f"test-fund-{uuid.uuid4().hex}",
        request_hash=b"test",
        tenant_id=None,
        actor="test",
        reason="test funding",
    )
    session.commit()
    return posting.transaction_id


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
