"""The console benchmark's data: a platform as it looks after ~60 days, written set-based (a few dozen statements
whatever the size) so that the ledger's own rules hold and reconciliation balances.

- ~200 tenants (through the tenants service: pool account, audit event), sized like real customers (a few large,
  a long tail), plans mixed, a few suspended;
- 100,000 users (a tenant admin per tenant, the rest members, ~2 % frozen) and their ledger accounts, an API key for
  each tenant admin and every tenth member (~5 % revoked);
- the ledger, ~1,000,000 entries in time order over the period: each pool bought from issuance first; one funding
  batch per tenant crediting all its users, then periodic batches to random subsets; single recharges pool -> user;
  captures user -> usage revenue, each from a captured hold. Captures older than the jobs table are holds
  referenced `usage:<n>` (the 10,000 jobs cannot account for 300,000 captures); the jobs' own captures are
  referenced `job:<public id>` like the product's. Every balance_after chains, every account's balance and held
  follow the journal and its open holds;
- 10,000 jobs over the last 10 days (succeeded, failed, canceled, and a live tail of queued and running ones with
  their holds still held), webhook events and deliveries for the jobs that asked (delivered, failed, a pending
  backlog), and the audit trail of all of it (user and key creation, recharges, batches, freezes);
- price versions, sealed books and a recorded reconciliation run come from the product's own services.

Approvals are made afterwards through the HTTP API (bench/console.py), so their payloads are the product's.

This module sizes the platform, makes the tenants and staff through the services, runs the steps in order and
collects the ids the console's pages are opened with; the statements are in bench/console_seed_platform.py (users,
keys, jobs, webhooks, audit trail, prices) and bench/console_seed_ledger.py (the ledger's plan, entries, balances)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import console_seed_ledger
import console_seed_platform
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.sealing import service as sealing
from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.auth.scopes import ROLE_SCOPES, Scope
from facemint.config import Settings
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan
from facemint.tenants.schemas import TenantCreate
from facemint.users import service as user_service
from facemint.users.orm import Role
from facemint.users.schemas import UserCreate

PASSWORD = "bench-console-password-1"  # noqa: S105 (a throw-away database's staff)


@dataclass(frozen=True)
class Scale:
    tenants: int = 200
    users: int = 100_000
    entries: int = 1_000_000
    jobs: int = 10_000
    days: int = 60
    periodic_batches: int = 200  # besides one funding batch per tenant


@dataclass
class Seeded:
    """Who signs in, and ids to fill the console's path parameters with (all inside `tenant_id`, the tenant
    admin's own tenant, so every role may open them)."""

    staff: dict[str, str] = field(default_factory=dict)  # role -> email (password PASSWORD)
    staff_ids: dict[str, int] = field(default_factory=dict)
    api_keys: dict[str, str] = field(default_factory=dict)  # role -> API key (for the API phase)
    ids: dict[str, object] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def tenant_sizes(scale: Scale) -> list[int]:
    """Users per tenant: a few large customers and a long tail (weights 1/(i+5)^0.9), at least 5 each."""
    weights = [1 / (i + 5) ** 0.9 for i in range(scale.tenants)]
    total = sum(weights)
    sizes = [max(5, int(scale.users * w / total)) for w in weights]
    sizes[0] += scale.users - sum(sizes)
    return sizes


def _people(session: Session, settings: Settings, scale: Scale, seeded: Seeded) -> list[int]:
    rng = random.Random(7)
    tenant_ids = []
    for i in range(scale.tenants):
        plan = Plan.enterprise if i < 10 else Plan.pro if i < 60 else Plan.free
        name = f"{rng.choice(['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli', 'Stark', 'Wayne'])} {i + 1:03d}"
        tenant = tenant_service.create(session, context=None, data=TenantCreate(name=name, plan=plan))
        tenant_ids.append(tenant.id)
    session.execute(
        text("UPDATE tenants SET status = 'suspended' WHERE id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": tenant_ids[-5:]},
    )
    for role, home in (
        (Role.platform_admin, None),
        (Role.operator, None),
        (Role.finance, None),
        (Role.tenant_admin, tenant_ids[0]),
    ):
        user = user_service.create(
            session,
            context=None,
            data=UserCreate(
                email=f"{role.value.replace('_', '-')}@console.bench.test",
                role=role,
                tenant_id=home,
                password=PASSWORD,
            ),
        )
        seeded.staff[role.value] = user.email
        seeded.staff_ids[role.value] = user.id
        if role in (Role.platform_admin, Role.operator):
            _, key = key_service.create(
                session,
                context=None,
                settings=settings,
                data=ApiKeyCreate(user_id=user.id, name="bench", scopes=sorted(Scope)),
            )
            seeded.api_keys[role.value] = key
    session.commit()
    return tenant_ids


_BIG_TABLES = (
    "ledger_entries",
    "ledger_transactions",
    "ledger_accounts",
    "holds",
    "users",
    "api_keys",
    "jobs",
    "audit_events",
    "webhook_events",
    "webhook_deliveries",
    "recharge_batches",
    "tenants",
)


def periodic_batches(scale: Scale, sizes: list[int], tenant_ids: list[int]) -> dict[str, list[Any]]:
    rng = random.Random(11)
    chosen = rng.choices(range(scale.tenants), weights=sizes, k=scale.periodic_batches)
    reasons = ["monthly allowance", "campaign credit", "team top-up", "quarterly bonus"]
    return {
        "b_tenants": [tenant_ids[i] for i in chosen],
        "b_days": [3 + rng.random() * (scale.days - 3.5) for _ in chosen],
        "b_rows": [max(1, min(sizes[i] - 1, int(rng.expovariate(1 / 500)))) for i in chosen],
        "b_reasons": [rng.choice(reasons) for _ in chosen],
    }


def seed(session: Session, settings: Settings, scale: Scale) -> Seeded:
    seeded = Seeded()
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seeded.seconds[name] = round(now - clock, 2)
        print(f"  seed: {name} in {now - clock:.1f} s", flush=True)
        clock = now

    session.execute(text("SELECT setseed(0.42)"))
    tenant_ids = _people(session, settings, scale, seeded)
    lap("tenants and staff (services)")
    sizes = tenant_sizes(scale)
    now = session.execute(text("SELECT date_trunc('minute', now())")).scalar_one()
    start: datetime = now - timedelta(days=scale.days)
    system: dict[str, int] = dict(
        session.execute(text("SELECT kind, id FROM ledger_accounts WHERE NOT balance_tracked")).all()
    )
    params: dict[str, object] = {
        "tenants": tenant_ids,
        "n_tenants": scale.tenants,
        "sizes": sizes,
        "start": start,
        "days": scale.days,
        "n_users": sum(sizes),
        "issuance": system["issuance"],
        "revenue": system["usage_revenue"],
        "platform_admin": seeded.staff_ids["platform_admin"],
        "admin_scopes": sorted(s.value for s in ROLE_SCOPES[Role.tenant_admin]),
        "member_scopes": sorted(s.value for s in ROLE_SCOPES[Role.member]),
        "salt": "console",
        "jobs": scale.jobs,
        "queued": max(1, scale.jobs // 160),
        "running": max(1, scale.jobs // 500),
    }
    batches = periodic_batches(scale, sizes, tenant_ids)
    params.update(batches)
    console_seed_platform.users_accounts_keys(session, params)
    lap(f"{sum(sizes):,} users, accounts and keys")
    # Entries budget: topups and batches are what they are; the rest is split 1 : 4 singles : captures (2 each).
    batch_rows = sum(sizes) + sum(batches["b_rows"])
    fixed = 2 * (scale.tenants + scale.tenants // 2 * 2) + batch_rows + scale.tenants + scale.periodic_batches
    job_captures = int(scale.jobs * 0.87)
    pairs = max(0, (scale.entries - fixed) // 2 - job_captures)
    params["singles"] = pairs // 5
    params["captures"] = pairs - pairs // 5
    console_seed_platform.plan_jobs(session, params)
    total = console_seed_ledger.plan_transactions(session, params)
    lap(f"plan of {total:,} transactions, their holds and batches")
    console_seed_ledger.write_entries(session, total)
    lap("ledger entries")
    console_seed_ledger.settle(session, params)
    console_seed_platform.jobs_webhooks_audit(session, params)
    session.commit()
    lap("balances, jobs, webhooks, audit trail")
    _collect(session, seeded, tenant_ids[0])
    return seeded


def finish(engine: Engine, session: Session, seeded: Seeded) -> None:
    """What a running platform has done by now: the books sealed (the periodic sealer's work, which also fills the
    journal's rollup where the sealer keeps one), then every table vacuumed and analysed (autovacuum's)."""
    begun = time.perf_counter()
    while sealing.seal_all(session, max_rows=50_000, max_batches=100):
        session.commit()
    session.commit()
    seeded.seconds["sealing"] = round(time.perf_counter() - begun, 2)
    begun = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        for table in tables:
            conn.exec_driver_sql(f'VACUUM (ANALYZE) "{table}"')
    seeded.seconds["vacuum analyze"] = round(time.perf_counter() - begun, 2)
    print(f"  seed: sealing {seeded.seconds['sealing']} s, vacuum analyze {seeded.seconds['vacuum analyze']} s")


def _collect(session: Session, seeded: Seeded, tenant_id: int) -> None:
    def one(sql: str) -> object:
        return session.execute(text(sql), {"t": tenant_id}).scalar()

    seeded.ids = {
        "tenant": tenant_id,
        "user": one("SELECT max(id) FROM users WHERE tenant_id = :t AND role = 'member' AND status = 'active'"),
        "key": one("SELECT max(id) FROM api_keys WHERE tenant_id = :t"),
        "batch": one("SELECT max(id) FROM recharge_batches WHERE tenant_id = :t AND row_count > 20"),
        "job": one("SELECT public_id FROM jobs WHERE tenant_id = :t AND status = 'succeeded' ORDER BY id DESC LIMIT 1"),
        "job_numeric": one("SELECT max(id) FROM jobs WHERE tenant_id = :t AND status = 'succeeded'"),
        "transaction": one("SELECT max(id) FROM ledger_transactions WHERE tenant_id = :t AND kind = 'recharge'"),
        "event": one("SELECT max(id) FROM audit_events WHERE tenant_id = :t"),
        "webhook": one("SELECT public_id FROM webhook_events WHERE tenant_id = :t ORDER BY id DESC LIMIT 1"),
        "hold": one("SELECT max(id) FROM holds WHERE tenant_id = :t"),
        "account": one(
            "SELECT account_id FROM users WHERE tenant_id = :t AND role = 'member' ORDER BY id DESC LIMIT 1"
        ),
        "user_email": one(
            "SELECT email FROM users WHERE tenant_id = :t AND role = 'member' AND status = 'active' "
            "ORDER BY id DESC LIMIT 1"
        ),
    }
    for table in (*_BIG_TABLES, "recharge_approvals"):
        seeded.counts[table] = int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
