"""Worlds for the access matrix (test_access_matrix.py): two tenants, "own" (the tenant-scoped callers' tenant)
and "other", each with the objects a route can name (a tenant, users, an API key, jobs, a recharge batch, a held
approval, a ledger transaction), plus one caller per role, each with an API key holding all its role's scopes.

Everything is built lazily, on first use, through the services, in one `facemint.db.unit_of_work`: a cell's
world holds only what its request names, so a fresh world per mutating cell stays cheap. Users get no password
(argon2 is slow) except the one `/auth/token` signs in as.

Below the world: the requests the matrix's rules send (`Call`), each naming the objects of a cell's variant."""

from __future__ import annotations

import functools
import io
import itertools
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from PIL import Image
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind, TransactionKind
from facemint.abuse import freezing
from facemint.abuse import service as abuse_service
from facemint.abuse.counters import Triggered
from facemint.abuse.orm import RuleAction, RuleKind
from facemint.abuse.schemas import AbuseRuleCreate
from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.approvals import service as approvals
from facemint.approvals.service import Held
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope, scopes_for_role
from facemint.balance_alerts import service as alerts
from facemint.balance_alerts.schemas import BalanceAlertSet
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.db import unit_of_work
from facemint.grants import service as grant_service
from facemint.grants.schemas import GrantCreate
from facemint.integrations.zendesk import service as zendesk
from facemint.integrations.zendesk.orm import AssetKind
from facemint.integrations.zendesk.schemas import ConnectorWrite
from facemint.jobs import service as jobs
from facemint.jobs.submission import SWAP_OPERATION
from facemint.recharges import batch as batch_service
from facemint.recharges import service as recharge_service
from facemint.recharges.parsing import parse_csv
from facemint.recharges.schemas import RechargeCreate
from facemint.storage import make_storage
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan, Tenant
from facemint.tenants.schemas import TenantCreate
from facemint.users import service as user_service
from facemint.users.orm import STAFF_ROLES, Role, User, UserStatus
from facemint.users.schemas import UserCreate
from tests.factories import PASSWORD, bearer

# Variants: the callers' own tenant, the other tenant, and (jobs) another user of the callers' own tenant.
OWN, OTHER, PEER = "own", "other", "peer"
REASON = "access matrix"
_counter = itertools.count(1)

# The rate limits of the largest plan: a shared world sends a few hundred requests with the same keys.
WORLD_PLAN = Plan.enterprise
USER_TOKENS = 1_000  # each tenant user's own account: a swap's hold, a reversal taking a recharge back
POOL_TOKENS = 1_000_000  # each pool: a held approval (above the threshold) still covered when it is approved
ALERT_THRESHOLD = 1  # low-balance alerts the world sets: far below every funded account, so none fires


@functools.cache
def password_hash() -> str:
    """PASSWORD hashed with argon2id at its lowest cost. A sign-in verifies with the parameters its hash names, so
    `/auth/token` answers as it does for any user, in a millisecond rather than a tenth of a second per cell."""
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)


@functools.cache
def png() -> bytes:
    """A small PNG for swap uploads (a submit only sniffs it; no worker runs it)."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class WorldUser:
    """A user of the world: the row and, for callers, its API key."""

    user: User
    key: str | None = None

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def email(self) -> str:
        return self.user.email

    @property
    def headers(self) -> dict[str, str]:
        assert self.key is not None, "this user has no API key"
        return bearer(self.key)


class Side:
    """One tenant's objects. Callers (its tenant admin and member, who own the jobs) are never the targets of user,
    key or money routes: those name `subject`, another member, so freezing or debiting it leaves every caller as
    it was."""

    def __init__(self, world: World, label: str) -> None:
        self.world = world
        self.label = label
        self._cache: dict[str, Any] = {}

    def made(self, name: str) -> bool:
        """Whether this world has made the object `name` (e.g. "tenant") yet."""
        return name in self._cache

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def marker(self) -> str:
        """Unique text in this tenant's name and its users' emails: a response showing it shows this tenant."""
        return self._once("marker", lambda: f"{self.label}{uuid.uuid4().hex[:10]}")

    @property
    def tenant(self) -> Tenant:
        def make() -> Tenant:
            tenant = tenant_service.create(
                self.world.session, context=None, data=TenantCreate(name=f"matrix-{self.marker}", plan=WORLD_PLAN)
            )
            self.world.fund(tenant.pool_account_id, POOL_TOKENS)
            return tenant

        return self._once("tenant", make)

    def _user(self, role: Role, *, key: bool = True, tokens: int = USER_TOKENS) -> WorldUser:
        user = self.world.user(role, tenant=self.tenant, email_tag=self.marker)
        if tokens:
            self.world.fund(user.account_id, tokens)
        return WorldUser(user, self.world.issue_key(user) if key else None)

    @property
    def admin(self) -> WorldUser:
        return self._once("admin", lambda: self._user(Role.tenant_admin))

    @property
    def member(self) -> WorldUser:
        return self._once("member", lambda: self._user(Role.member))

    @property
    def subject(self) -> WorldUser:
        """A member no request is sent as: what user, key and money routes act on."""
        return self._once("subject", lambda: self._user(Role.member, key=False))

    @property
    def frozen_subject(self) -> WorldUser:
        def make() -> WorldUser:
            subject = self._user(Role.member, key=False, tokens=0)
            subject.user.status = UserStatus.frozen.value
            self.world.session.flush()
            return subject

        return self._once("frozen_subject", make)

    @property
    def subject_key_id(self) -> int:
        def make() -> int:
            api_key, _ = key_service.create(
                self.world.session,
                context=None,
                settings=self.world.settings,
                data=ApiKeyCreate(user_id=self.subject.id, name="subject", scopes=[Scope.balance_read]),
            )
            return api_key.id

        return self._once("subject_key_id", make)

    def alerted(self, member: WorldUser) -> int:
        """`member`'s id, once a low-balance alert is set on its account."""

        def make() -> int:
            session = self.world.session
            target = alerts.user_account(session, user_id=member.id, tenant_scope=None)
            alerts.set_alert(session, context=None, target=target, data=BalanceAlertSet(threshold=ALERT_THRESHOLD))
            return member.id

        return int(self._once(f"alert:{member.id}", make))

    @property
    def alerted_pool(self) -> int:
        """The tenant's id, once a low-balance alert is set on its pool."""

        def make() -> int:
            session = self.world.session
            target = alerts.pool_account(session, tenant_id=self.tenant.id, tenant_scope=None)
            alerts.set_alert(session, context=None, target=target, data=BalanceAlertSet(threshold=ALERT_THRESHOLD))
            return self.tenant.id

        return int(self._once("alerted_pool", make))

    def job_of(self, owner: WorldUser, *, finished: bool = False) -> str:
        """The public id of a queued job of `owner` (or a canceled one: `finished`), made as a submit makes it."""

        def make() -> str:
            session = self.world.session
            outcome = jobs.submit(
                session,
                request=jobs.SubmitRequest(
                    public_id=jobs.new_public_id(),
                    tenant_id=self.tenant.id,
                    user_id=owner.id,
                    api_key_id=None,
                    account_id=owner.user.account_id,
                    operations=(SWAP_OPERATION,),
                    queue=self.world.settings.queue_name,
                    units=1,
                    idempotency_key=f"matrix-{uuid.uuid4().hex}",
                    request_hash=b"matrix",
                    options={},
                    input_location=f"inputs/matrix-{uuid.uuid4().hex}",
                    webhook_url=None,
                    max_attempts=1,
                    deadline_seconds=self.world.settings.job_deadline_seconds,
                ),
            )
            job = jobs.cancel(session, job=outcome.job) if finished else outcome.job
            return str(job.public_id)

        return str(self._once(f"job:{owner.id}:{finished}", make))

    @property
    def zendesk_connector(self) -> str:
        """The tenant's Zendesk connector (its public id), paid for by `subject`."""

        def make() -> str:
            connector = zendesk.put_connector(
                self.world.session,
                context=self._as_admin(),
                settings=self.world.settings,
                tenant_id=self.tenant.id,
                tenant_scope=None,
                data=zendesk_connector_body(self),
            )
            return connector.public_id

        return str(self._once("zendesk_connector", make))

    @property
    def zendesk_asset_id(self) -> int:
        """A scene image of the tenant's, named by no rule."""

        def make() -> int:
            asset = zendesk.create_asset(
                self.world.session,
                context=self._as_admin(),
                settings=self.world.settings,
                storage=make_storage(self.world.settings),
                tenant_id=self.tenant.id,
                tenant_scope=None,
                kind=AssetKind.scene,
                name="matrix",
                data=png(),
            )
            return asset.id

        return int(self._once("zendesk_asset_id", make))

    @property
    def abuse_rule_id(self) -> int:
        """A `jobs_per_window` flag rule of this tenant, made by its admin."""

        def make() -> int:
            rule = abuse_service.create_rule(
                self.world.session,
                context=self._as_admin(),
                redis=self.world.redis,
                tenant_id=self.tenant.id,
                data=AbuseRuleCreate(
                    kind=RuleKind.jobs_per_window, action=RuleAction.flag, max_jobs=1000, window_seconds=60
                ),
            )
            return rule.id

        return int(self._once("abuse_rule_id", make))

    @property
    def abuse_trigger_id(self) -> int:
        """An open trigger of that rule for `subject` (a flag: nobody is frozen)."""

        def make() -> int:
            (trigger,) = freezing.record_triggers(
                self.world.session,
                redis=self.world.redis,
                tenant_id=self.tenant.id,
                user_id=self.subject.id,
                job_public_id=None,
                triggered=[
                    Triggered(
                        rule_id=self.abuse_rule_id,
                        kind=RuleKind.jobs_per_window.value,
                        action=RuleAction.flag.value,
                        window_start=1_800_000_000,
                        window_seconds=60,
                        generation=0,
                        observed={"count": 1001, "limit": 1000},
                        first=True,
                    )
                ],
            )
            return trigger.id

        return int(self._once("abuse_trigger_id", make))

    @property
    def grant_id(self) -> int:
        """A recurring grant of this tenant, paid from its pool (what its tenant admin may make and change)."""

        def make() -> int:
            grant = grant_service.create(
                self.world.session,
                context=None,
                data=GrantCreate(**tenant_grant_body(self)),
                ceiling=self.world.settings.recharge_max_amount,
            )
            return grant.id

        return int(self._once("grant_id", make))

    def _as_admin(self) -> RequestContext:
        return self.world.context(self.admin, self.tenant)

    @property
    def transaction_id(self) -> int:
        """A small recharge of `subject` from the pool, by the tenant admin: a transaction to reverse."""

        def make() -> int:
            outcome = recharge_service.submit_recharge(
                self.world.session,
                context=self._as_admin(),
                data=RechargeCreate(user_id=self.subject.id, amount=10, reason=REASON),
                idempotency_key=f"matrix-{uuid.uuid4().hex}",
                policy=self.world.policy,
            )
            assert not isinstance(outcome, Held), outcome
            return outcome.transaction_id

        return int(self._once("transaction_id", make))

    @property
    def approval_id(self) -> int:
        """A recharge of `subject` above the approval threshold by the tenant admin, held for a second operator."""

        def make() -> int:
            outcome = recharge_service.submit_recharge(
                self.world.session,
                context=self._as_admin(),
                data=RechargeCreate(
                    user_id=self.subject.id, amount=self.world.settings.approval_threshold_amount + 1, reason=REASON
                ),
                idempotency_key=f"matrix-{uuid.uuid4().hex}",
                policy=self.world.policy,
            )
            assert isinstance(outcome, Held), outcome
            return outcome.approval.id

        return int(self._once("approval_id", make))

    @property
    def batch_id(self) -> int:
        """A partial batch by an operator, scoped to this tenant: a row crediting `subject`, and a row naming the
        other tenant's subject, which fails as `user_of_other_tenant`. This tenant's admin may read the batch, never
        whom that row named (the tenant redaction), which the matrix's leak check holds every read to."""

        def make() -> int:
            session = self.world.session
            stranger = self.world.other if self is self.world.own else self.world.own
            body = f"email,amount\n{self.subject.email},5\n{stranger.subject.email},5\n".encode()
            outcome = batch_service.submit_batch(
                session,
                context=self.world.context(self.world.caller(Role.operator)),
                request=batch_service.BatchRequest(
                    mode="partial",
                    dry_run=False,
                    reason=REASON,
                    tenant_id=self.tenant.id,
                    idempotency_key=f"matrix-{uuid.uuid4().hex}",
                    content_kind="text/csv",
                    body=body,
                ),
                parsed=parse_csv(body, max_rows=10, ceiling=self.world.settings.recharge_max_amount),
                policy=self.world.policy,
            )
            assert outcome.held is None, outcome
            assert [row["code"] for row in outcome.result["failed"]] == ["user_of_other_tenant"], outcome
            # A batch stages its rows in temporary tables dropped at commit: a second batch needs a new transaction.
            session.commit()
            return int(outcome.result["batch_id"])

        return int(self._once("batch_id", make))


class World:
    """Callers and both tenants' objects, made on first use in one unit of work (see `build`)."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.policy = approvals.Policy.from_settings(settings)
        self.own = Side(self, OWN)
        self.other = Side(self, OTHER)
        self._staff: dict[Role, WorldUser] = {}
        self._signer: WorldUser | None = None
        self._redis: Redis | None = None

    @property
    def redis(self) -> Redis:
        """Where the services mirror what they change (abuse rules) once the world commits."""
        if self._redis is None:
            self._redis = Redis.from_url(self.settings.redis_url or "")
        return self._redis

    def side(self, variant: str) -> Side:
        """The tenant a cell's objects belong to: "own" (and "peer") the callers' tenant, "other" the other one."""
        return self.other if variant == OTHER else self.own

    def caller(self, role: Role) -> WorldUser:
        """The caller of a role: tenant roles are the "own" tenant's; staff belong to no tenant."""
        if role is Role.tenant_admin:
            return self.own.admin
        if role is Role.member:
            return self.own.member
        if role not in self._staff:
            user = self.user(role, tenant=None, email_tag="staff")
            self._staff[role] = WorldUser(user, self.issue_key(user))
        return self._staff[role]

    @property
    def signer(self) -> WorldUser:
        """The one user with a password, for `/auth/token`."""
        if self._signer is None:
            self._signer = WorldUser(self.user(Role.member, tenant=self.own.tenant, email_tag="signer", password=True))
        return self._signer

    # --- through the services, never committing (the unit of work does) ----------------------------------------

    def user(self, role: Role, *, tenant: Tenant | None, email_tag: str, password: bool = False) -> User:
        return user_service.create(
            self.session,
            context=None,
            data=UserCreate(
                email=f"{role.value}-{email_tag}-{next(_counter)}@matrix.example.test",
                role=role,
                tenant_id=None if role in STAFF_ROLES else tenant.id,  # type: ignore[union-attr]
            ),
            password_hash=password_hash() if password else None,
        )

    def issue_key(self, user: User) -> str:
        _, key = key_service.create(
            self.session,
            context=None,
            settings=self.settings,
            data=ApiKeyCreate(user_id=user.id, name="matrix", scopes=sorted(scopes_for_role(user.role))),
        )
        return key

    def fund(self, account_id: int, amount: int) -> None:
        ledger.transfer(
            self.session,
            kind=TransactionKind.recharge,
            from_account_id=ledger.system_account_id(self.session, kind=AccountKind.issuance),
            to_account_id=account_id,
            amount=amount,
            idempotency_key=f"matrix-fund-{uuid.uuid4().hex}",
            request_hash=b"matrix",
            tenant_id=None,
            actor="test",
            reason="matrix funding",
        )

    def context(self, member: WorldUser, tenant: Tenant | None = None) -> RequestContext:
        """What a request by `member` (of `tenant`; staff: None) would pass its services."""
        user = member.user
        principal = Principal(
            user_id=user.id,
            email=user.email,
            role=Role(user.role),
            tenant_id=user.tenant_id,
            account_id=user.account_id,
            plan=tenant.plan if tenant is not None else "platform",
            scopes=scopes_for_role(user.role),
        )
        return RequestContext(principal=principal, request_id=None, ip="127.0.0.1")


@contextmanager
def build(sessions: sessionmaker[Session], settings: Settings) -> Iterator[World]:
    """A world whose objects, made inside the block, are committed when it ends."""
    with unit_of_work(sessions) as session:
        yield World(session, settings)


def tenant_grant_body(side: Side) -> dict[str, Any]:
    """A daily grant of the side's tenant, paid from its pool."""
    return {
        "name": f"grant {side.marker}",
        "scope": "tenant",
        "tenant_id": side.tenant.id,
        "amount": 5,
        "period": "day",
        "funding": "tenant_pool",
    }


def zendesk_connector_body(side: Side) -> ConnectorWrite:
    return ConnectorWrite.model_validate(
        {
            "subdomain": "matrix",
            "api_email": "agent@matrix.example.test",
            "api_token": "matrix-token",
            "signing_secret": "matrix-secret",
            "integration_user_id": side.subject.id,
        }
    )
