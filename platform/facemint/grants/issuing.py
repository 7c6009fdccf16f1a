"""Issuing recurring grants (the workers' scheduler, `facemint.worker.granting`): for an enabled grant within its
`starts_at`/`ends_at`, the period containing the database's now (UTC periods, `billing.grants.schemas.Period`) is
granted to every eligible account that lacks it, set-based, one chunk per call.

- Eligible: an active user of an active tenant on the grant's plan (plan grants), or of the grant's tenant,
  carrying its label when it has one (tenant grants). A user who becomes eligible mid-period (new, unfrozen,
  labelled) gets the current period's grant on the next run.
- Once only: each (grant, period start, account) is awarded at most once, by the database (`grant_awards`' primary
  key, written with the credit). A rerun finds nothing lacking; two runners at once: the second skips a grant the
  first holds (a transaction-scoped advisory lock per grant), and the key refuses what any race would double.
- Late: a run hours into a period grants that period, its lots expiring at the period's end. A period that has
  ended is never granted: only the current one is, so a period no run reached is skipped (its lots would be born
  expired).
- Approved terms only: what `credit_grants` holds is what runs. A platform-funded grant is written there, and
  may mint more, only once a second operator approves it (`facemint.grants.service`, checked again by the
  database at commit); a change waiting for approval lives in its approval, so the old terms keep running.
- Funding: `platform` credits from the issuance account in chunks of `limit` accounts, one transaction each;
  `tenant_pool` hands on from the tenant's pool all the accounts lacking the period in one transaction, or none of
  them when the pool cannot pay them all: the shortfall is recorded on the period (`credit_grant_periods`) and
  the next run tries again (all or none, so no order among the tenant's users decides who gets free tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.orm import Session

from billing.grants import service as grant_ledger
from billing.grants.schemas import GrantApplied, Period
from billing.ledger import service as ledger
from billing.ledger.orm import AccountKind
from facemint import tenancy
from facemint.grants.orm import CreditGrant, Funding, GrantScope
from facemint.tenants.orm import Tenant, TenantStatus
from facemint.users.orm import UserStatus

ACTOR = "system:grants"
_TRY_GRANT_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:lock, 0))")


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """One call's work on one grant: what it granted, whether the pool fell short (`shortfall`: the tokens the
    run needed), whether another runner held the grant (`busy`), and whether accounts may still lack the period
    (`more`: a full chunk; the next call starts after `last_account_id`)."""

    grant_id: int
    period_start: datetime | None = None
    granted_accounts: int = 0
    granted_tokens: int = 0
    transaction_id: int | None = None
    shortfall: int | None = None
    busy: bool = False
    more: bool = False
    last_account_id: int | None = None


def _active(now: ColumnElement[datetime]) -> list[ColumnElement[bool]]:
    """A grant in force at `now`: enabled, started and not ended."""
    return [
        CreditGrant.enabled.is_(True),
        CreditGrant.starts_at <= now,
        (CreditGrant.ends_at.is_(None)) | (CreditGrant.ends_at > now),
    ]


def due_grants(session: Session) -> list[int]:
    """The grants in force now, oldest first."""
    return list(session.scalars(select(CreditGrant.id).where(*_active(func.now())).order_by(CreditGrant.id)))


def issue_chunk(session: Session, *, grant_id: int, limit: int, after_account_id: int | None = None) -> ChunkOutcome:
    """Grant the current period of one grant to up to `limit` eligible accounts lacking it (all of them for a
    pool-funded grant), in account order after `after_account_id`. Nothing when the grant is no longer in force
    or another runner holds it."""
    if not session.execute(_TRY_GRANT_LOCK, {"lock": f"grant:{grant_id}"}).scalar_one():
        return ChunkOutcome(grant_id, busy=True)
    found = session.execute(
        select(CreditGrant, func.now()).where(CreditGrant.id == grant_id, *_active(func.now()))
    ).one_or_none()
    if found is None:
        return ChunkOutcome(grant_id)  # disabled or ended since it was listed
    grant, now = found
    period_start, period_end = Period(grant.period).bounds(now)
    pooled = grant.funding == Funding.tenant_pool
    grant_ledger.create_stage(session)
    staged, last_account_id = _stage_lacking(
        session,
        grant=grant,
        period_start=period_start,
        period_end=period_end,
        after_account_id=after_account_id,
        limit=None if pooled else limit,
    )
    if staged == 0:
        return ChunkOutcome(grant_id, period_start=period_start)
    if pooled:
        source_account_id = session.scalar(select(Tenant.pool_account_id).where(Tenant.id == grant.tenant_id))
        assert source_account_id is not None  # a tenant grant's tenant (a foreign key) has a pool
    else:
        source_account_id = ledger.system_account_id(session, kind=AccountKind.issuance)
    applied = grant_ledger.apply_staged(
        session,
        grant_id=grant.id,
        period_start=period_start,
        source_account_id=source_account_id,
        source_tracked=pooled,
        tenant_id=grant.tenant_id,
        actor=ACTOR,
        reason=f"recurring grant {grant.id} for the {grant.period} from {period_start:%Y-%m-%d %H:%M} UTC",
    )
    _record_period(session, grant_id=grant.id, period_start=period_start, period_end=period_end, applied=applied)
    if applied.short:
        return ChunkOutcome(grant_id, period_start=period_start, shortfall=applied.total)
    return ChunkOutcome(
        grant_id,
        period_start=period_start,
        granted_accounts=applied.accounts,
        granted_tokens=applied.total,
        transaction_id=applied.transaction_id,
        more=not pooled and staged >= limit,
        last_account_id=last_account_id,
    )


def _stage_lacking(
    session: Session,
    *,
    grant: CreditGrant,
    period_start: datetime,
    period_end: datetime,
    after_account_id: int | None,
    limit: int | None,
) -> tuple[int, int | None]:
    """Stage the eligible accounts lacking the period's award, in account order (one statement); returns how many
    and the last one."""
    conditions, params = _eligibility(scope=grant.scope, plan=grant.plan, tenant_id=grant.tenant_id, label=grant.label)
    params |= {
        "grant_id": grant.id,
        "period_start": period_start,
        "period_end": period_end,
        "amount": grant.amount,
        "priority": grant.priority,
    }
    if after_account_id is not None:
        conditions.append("u.account_id > :after")
        params["after"] = after_account_id
    if limit is not None:
        params["limit"] = limit
    row = session.execute(
        text(
            f"""
            WITH staged AS (
                INSERT INTO {grant_ledger.STAGE_TABLE} (row_no, account_id, amount, priority, expires_at)
                SELECT row_number() OVER (ORDER BY e.account_id), e.account_id, :amount, :priority, :period_end
                FROM (
                    SELECT u.account_id FROM users u JOIN tenants t ON t.id = u.tenant_id
                    WHERE {" AND ".join(conditions)}
                      AND NOT EXISTS (
                          SELECT 1 FROM grant_awards a
                          WHERE a.grant_id = :grant_id AND a.period_start = :period_start
                            AND a.account_id = u.account_id
                      )
                    ORDER BY u.account_id
                    {"LIMIT :limit" if limit is not None else ""}
                ) e
                RETURNING account_id
            )
            SELECT count(*) AS n, max(account_id) AS last FROM staged
            """
        ),
        params,
    ).one()
    return int(row.n), row.last


def _eligibility(
    *, scope: str, plan: str | None, tenant_id: int | None, label: str | None
) -> tuple[list[str], dict[str, object]]:
    """The conditions on `users u JOIN tenants t` that make an account eligible for a grant of these terms."""
    conditions = [f"u.status = '{UserStatus.active.value}'", f"t.status = '{TenantStatus.active.value}'"]
    params: dict[str, object] = {}
    if scope == GrantScope.plan:
        conditions.append("t.plan = :plan")
        params["plan"] = plan
    else:
        tenant_parts, tenant_params = tenancy.sql_conditions(
            "u.tenant_id", tenant_scope=None, tenant_id=tenant_id, named=True
        )
        conditions += tenant_parts
        params |= tenant_params
        if label is not None:
            conditions.append("u.labels @> ARRAY[CAST(:label AS text)]")
            params["label"] = label
    return conditions, params


def eligible_accounts(
    session: Session, *, scope: str, plan: str | None, tenant_id: int | None, label: str | None
) -> int:
    """How many accounts a grant of these terms would credit in a period now (what four-eyes weighs it by)."""
    conditions, params = _eligibility(scope=scope, plan=plan, tenant_id=tenant_id, label=label)
    return int(
        session.execute(
            text(f"SELECT count(*) FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE {' AND '.join(conditions)}"),
            params,
        ).scalar_one()
    )


def _record_period(
    session: Session, *, grant_id: int, period_start: datetime, period_end: datetime, applied: GrantApplied
) -> None:
    """Add what a run granted to its period, or record the shortfall it met (cleared by the next run that pays)."""
    short = applied.short
    session.execute(
        text(
            """
            INSERT INTO credit_grant_periods AS p
                (grant_id, period_start, period_end, granted_accounts, granted_tokens, shortfall_needed,
                 shortfall_available, shortfall_at)
            VALUES (:grant_id, :period_start, :period_end, :accounts, :tokens, :needed, :available,
                    CASE WHEN CAST(:needed AS bigint) IS NULL THEN NULL ELSE now() END)
            ON CONFLICT (grant_id, period_start) DO UPDATE SET
                granted_accounts = p.granted_accounts + excluded.granted_accounts,
                granted_tokens = p.granted_tokens + excluded.granted_tokens,
                shortfall_needed = excluded.shortfall_needed,
                shortfall_available = excluded.shortfall_available,
                shortfall_at = excluded.shortfall_at,
                updated_at = now()
            """
        ),
        {
            "grant_id": grant_id,
            "period_start": period_start,
            "period_end": period_end,
            "accounts": 0 if short else applied.accounts,
            "tokens": 0 if short else applied.total,
            "needed": applied.total if short else None,
            "available": applied.pool_available if short else None,
        },
    )
