"""Plain factory functions for tests. They go through the services (so the rows are what the product makes)
and commit, because tests run against a real, committing database."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from typing import Any

from redis import Redis
from sqlalchemy.orm import Session

from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from facemint.abuse import freezing
from facemint.abuse import service as abuse_service
from facemint.abuse.counters import Triggered
from facemint.abuse.orm import AbuseRule, AbuseTrigger, RuleAction, RuleKind
from facemint.abuse.schemas import AbuseRuleCreate
from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.approvals import approving
from facemint.approvals.service import Held, Policy
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope, scopes_for_role
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.db import run_after_commit
from facemint.grants import service as grant_service
from facemint.grants.orm import CreditGrant
from facemint.grants.schemas import GrantCreate
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan, Tenant
from facemint.tenants.schemas import TenantCreate
from facemint.users import service as user_service
from facemint.users.orm import STAFF_ROLES, Role, User
from facemint.users.schemas import UserCreate

_counter = itertools.count(1)
PASSWORD = "correct-horse-battery"
# The settings' default four-eyes thresholds and expiry.
DEFAULT_POLICY = Policy(
    **{
        field: Settings.model_fields[f"approval_{field}"].default
        for field in ("threshold_amount", "threshold_batch_total", "threshold_daily_total", "ttl_seconds")
    }
)


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


def staff_context(session: Session, role: Role = Role.operator) -> RequestContext:
    """A new staff user's request context, for calling services as that user."""
    user = create_user(session, role=role, password=None)
    principal = Principal(
        user_id=user.id,
        email=user.email,
        role=role,
        tenant_id=None,
        account_id=user.account_id,
        plan="platform",
        scopes=scopes_for_role(role),
    )
    return RequestContext(principal=principal, request_id=None, ip="127.0.0.1")


def approved_platform_grant(session: Session, data: GrantCreate, *, ceiling: int = 10_000_000) -> CreditGrant:
    """A platform-funded grant as the API makes one: asked for by an operator, approved by another (four eyes),
    committed."""
    held = grant_service.submit_create(
        session, context=staff_context(session), data=data, ceiling=ceiling, policy=DEFAULT_POLICY
    )
    assert isinstance(held, Held), held
    session.commit()
    approval = approving.approve(session, context=staff_context(session), approval_id=held.approval.id, note=None)
    session.commit()
    assert approval.result is not None
    grant = session.get(CreditGrant, approval.result["grant_id"])
    assert grant is not None
    return grant


def add_abuse_rule(
    session: Session,
    redis: Redis,
    *,
    tenant_id: int,
    kind: RuleKind,
    action: RuleAction = RuleAction.freeze,
    **params: Any,
) -> AbuseRule:
    """A tenant's abuse rule, made by a platform admin through the service, committed and mirrored into Redis (the
    after-commit step the request boundary would run)."""
    rule = abuse_service.create_rule(
        session,
        context=staff_context(session, Role.platform_admin),
        redis=redis,
        tenant_id=tenant_id,
        data=AbuseRuleCreate(kind=kind, action=action, **params),
    )
    session.commit()
    run_after_commit(session)
    return rule


def record_abuse_trigger(session: Session, redis: Redis, *, rule: AbuseRule, user_id: int) -> AbuseTrigger:
    """An open trigger of `rule` for the user, as the rule's check records one (a flag: nobody is frozen)."""
    (trigger,) = freezing.record_triggers(
        session,
        redis=redis,
        tenant_id=rule.tenant_id,
        user_id=user_id,
        job_public_id=None,
        triggered=[
            Triggered(
                rule_id=rule.id,
                kind=rule.kind,
                action=RuleAction.flag.value,
                window_start=1_800_000_000,
                window_seconds=rule.window_seconds,
                generation=0,
                observed={"count": 2, "limit": 1},
                first=True,
            )
        ],
    )
    session.commit()
    return trigger
