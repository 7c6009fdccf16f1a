"""The finance reports: daily movements per tenant and UTC day, and the outstanding liability at an instant.
Each is one set-based statement over the ledger (one snapshot); the values are bound parameters."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from billing.reports import rollup
from facemint.finance.errors import InvalidFilter
from facemint.finance.schemas import ExpiryLiability, Liability, LiabilityReport, TenantLiability
from facemint.finance.service import as_utc
from facemint.tenancy import sql_conditions

MAX_REPORT_DAYS = 366


@dataclass(frozen=True, slots=True)
class DailyRow:
    tenant_id: int | None
    day: date
    opening: int
    recharged: int
    consumed: int
    released: int
    adjustments: int
    expired: int
    closing: int


def default_days(first: date | None, last: date | None) -> tuple[date, date]:
    last = last or datetime.now(UTC).date()
    first = first or last - timedelta(days=29)
    if first > last:
        raise InvalidFilter("`from` must not be after `to`", filter="from")
    if (last - first).days + 1 > MAX_REPORT_DAYS:
        raise InvalidFilter(f"at most {MAX_REPORT_DAYS} days per report", filter="to")
    return first, last


# Opening balances and the days' movements from the journal's daily rollup rows (billing.reports.rollup) and the
# unsealed entries. Released comes from the holds that let tokens go uncharged (their own index; a full capture
# releases nothing, and its tenant and day are in `moves` anyway: the capture is posted with the same now() as the
# hold's resolved_at), by the hold's own tenant_id: a hold is made on a user or pool account and copies its tenant,
# which neither changes afterwards. Reconciliation checks both, so no join to the accounts.
_DAILY_SQL = f"""
WITH opening AS (
    SELECT m.tenant_id, sum(m.amount) AS amount
    FROM {rollup.movements(rollup.DAY, style="pyformat")} m
    WHERE m.bucket < %(start)s AND m.account_kind IN {rollup.TRACKED_KINDS_SQL} {{rollup_scope}}
    GROUP BY m.tenant_id
),
moves AS (
    SELECT m.tenant_id, (m.bucket AT TIME ZONE 'UTC')::date AS day,
           coalesce(sum(m.amount) FILTER (WHERE m.transaction_kind = 'recharge'), 0) AS recharged,
           coalesce(-sum(m.amount) FILTER (WHERE m.transaction_kind = 'capture'), 0) AS consumed,
           coalesce(sum(m.amount) FILTER (WHERE m.transaction_kind IN ('adjustment', 'reversal')), 0) AS adjustments,
           coalesce(-sum(m.amount) FILTER (WHERE m.transaction_kind = 'expiry'), 0) AS expired
    FROM {rollup.movements(rollup.DAY, style="pyformat")} m
    WHERE m.bucket >= %(start)s AND m.bucket < %(end)s AND m.account_kind IN {rollup.TRACKED_KINDS_SQL}
          {{rollup_scope}}
    GROUP BY 1, 2
),
released AS (
    SELECT coalesce(h.tenant_id, 0) AS tenant_id, (h.resolved_at AT TIME ZONE 'UTC')::date AS day,
           sum(h.amount - coalesce(h.captured_amount, 0)) AS released
    FROM holds h
    WHERE h.status <> 'held' AND h.captured_amount IS DISTINCT FROM h.amount
      AND h.resolved_at >= %(start)s AND h.resolved_at < %(end)s {{scope}}
    GROUP BY 1, 2
),
tenants AS (
    SELECT tenant_id FROM opening UNION SELECT tenant_id FROM moves UNION SELECT tenant_id FROM released
),
grid AS (
    SELECT tn.tenant_id, d::date AS day
    FROM tenants tn CROSS JOIN generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d
),
daily AS (
    SELECT g.tenant_id, g.day, coalesce(o.amount, 0) AS opening_before,
           coalesce(m.recharged, 0) AS recharged, coalesce(m.consumed, 0) AS consumed,
           coalesce(r.released, 0) AS released, coalesce(m.adjustments, 0) AS adjustments,
           coalesce(m.expired, 0) AS expired
    FROM grid g
    LEFT JOIN opening o ON o.tenant_id = g.tenant_id
    LEFT JOIN moves m ON m.tenant_id = g.tenant_id AND m.day = g.day
    LEFT JOIN released r ON r.tenant_id = g.tenant_id AND r.day = g.day
)
SELECT nullif(tenant_id, 0), day, CAST(opening AS bigint), CAST(recharged AS bigint), CAST(consumed AS bigint),
       CAST(released AS bigint), CAST(adjustments AS bigint), CAST(expired AS bigint),
       CAST(opening + recharged - consumed + adjustments - expired AS bigint) AS closing
FROM (
    SELECT tenant_id, day, recharged, consumed, released, adjustments, expired,
           opening_before + coalesce(sum(recharged - consumed + adjustments - expired) OVER (
               PARTITION BY tenant_id ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS opening
    FROM daily
) d
ORDER BY tenant_id, day
"""


def _scope_sql(
    tenant_scope: int | None, tenant_id: int | None, *, column: str = "a.tenant_id"
) -> tuple[str, dict[str, Any]]:
    parts, params = sql_conditions(column, tenant_scope=tenant_scope, tenant_id=tenant_id)
    return " ".join(f"AND {part}" for part in parts), params


def _rollup_scope_sql(tenant_scope: int | None, tenant_id: int | None) -> str:
    """`_scope_sql` on the rollup's `m.tenant_id` (same parameters). The rollup keeps accounts without a tenant
    under 0, which no tenant filter may match."""
    scope, _ = _scope_sql(tenant_scope, tenant_id, column="m.tenant_id")
    return f"{scope} AND m.tenant_id > 0" if scope else ""


def daily_report(
    session: Session, *, first: date, last: date, tenant_scope: int | None, tenant_id: int | None
) -> list[DailyRow]:
    """Per tenant and UTC day (`first` to `last`, both included), over the tenant's user and pool accounts:
    opening balance, recharged, consumed (captures), adjustments (adjustments and reversals), expired (credit lots
    that reached their expiry) and closing, with opening + recharged - consumed + adjustments - expired = closing.
    Everything comes from ledger entries (through their rollup), set-based, in one statement (one snapshot). A
    transfer between two accounts of the same tenant (pool to user) nets to zero.

    `released` is informational: tokens that left a hold without being charged that day (released or expired
    holds, and the unused rest of a partial capture). A hold never changes the balance (it only moves tokens from
    available to held and back), so released is not part of the identity.

    Accounts without a tenant (staff users) are listed under tenant_id None, for staff only."""
    scope, params = _scope_sql(tenant_scope, tenant_id, column="h.tenant_id")
    rollup_scope = _rollup_scope_sql(tenant_scope, tenant_id)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    params.update(start=start, end=end, first=first, last=last, **rollup.head_hint(session))
    sql = _DAILY_SQL.format(scope=scope, rollup_scope=rollup_scope)
    # Thousands of rows (every tenant, every day): whole numbers from the database, in DailyRow's field order.
    return [DailyRow(*row) for row in session.connection().exec_driver_sql(sql, params)]


@dataclass(frozen=True, slots=True)
class LiabilityLine:
    tenant_id: int | None
    kind: str  # user | pool
    balance: int
    held: int


_LIABILITY_NOW_SQL = """
SELECT coalesce(a.tenant_id, 0) AS tenant_id, a.kind, sum(a.balance) AS balance, sum(a.held) AS held
FROM ledger_accounts a WHERE a.balance_tracked {scope}
GROUP BY 1, 2 ORDER BY 1, 2
"""

# When a resolved hold held its tokens, [created_at, resolved_at), as ix_holds_open_during indexes it: containing an
# instant means created_at <= it < resolved_at (greatest() keeps a hold resolved in a transaction that began before
# it was made an empty range, where tstzrange would raise on the capture's update).
HOLD_OPEN_DURING = "tstzrange(h.created_at, greatest(h.created_at, h.resolved_at), '[)')"

# At a past instant: the balance from the journal's rollup up to it (billing.reports.rollup.up_to), per tenant and
# account kind, as the rollup keeps it (tracked accounts: kind user or tenant_pool); held from the holds open at it:
# made by then and still held (resolved_at is NULL exactly while held), or resolved after it, each half on its own
# partial index. Every tracked account's tenant and kind gets a line, as the accounts list them now.
_LIABILITY_AT_SQL = f"""
WITH acct AS (
    SELECT coalesce(a.tenant_id, 0) AS tenant_id, a.kind FROM ledger_accounts a WHERE a.balance_tracked {{scope}}
    GROUP BY 1, 2
),
bal AS (
    SELECT m.tenant_id, m.account_kind AS kind, sum(m.amount) AS amount
    FROM {rollup.up_to(style="pyformat")} m
    WHERE m.account_kind IN {rollup.TRACKED_KINDS_SQL} {{rollup_scope}}
    GROUP BY 1, 2
),
open_holds AS (
    SELECT h.account_id, h.amount FROM holds h WHERE h.status = 'held' AND h.created_at <= %(at)s
    UNION ALL
    SELECT h.account_id, h.amount FROM holds h
    WHERE h.status <> 'held' AND {HOLD_OPEN_DURING} @> CAST(%(at)s AS timestamptz)
),
held AS (
    SELECT coalesce(a.tenant_id, 0) AS tenant_id, a.kind, sum(h.amount) AS amount
    FROM open_holds h JOIN ledger_accounts a ON a.id = h.account_id
    WHERE a.balance_tracked {{scope}}
    GROUP BY 1, 2
)
SELECT acct.tenant_id, acct.kind, coalesce(bal.amount, 0) AS balance, coalesce(held.amount, 0) AS held
FROM acct LEFT JOIN bal USING (tenant_id, kind) LEFT JOIN held USING (tenant_id, kind)
ORDER BY 1, 2
"""


def liability(
    session: Session, *, at: datetime | None, tenant_scope: int | None, tenant_id: int | None
) -> list[LiabilityLine]:
    """Tokens owed to customers: per tenant and account kind (user, pool), balance and held (available = balance -
    held). `at=None` reads the accounts' balance and held now; a past instant sums the entries up to it for the
    balance (through the journal's rollup: the same sums, without reading every entry), and the holds open at it
    (made by then, not resolved by then) for held. One statement: one snapshot.
    """
    scope, params = _scope_sql(tenant_scope, tenant_id)
    if at is None:
        sql = _LIABILITY_NOW_SQL.format(scope=scope)
    else:
        sql = _LIABILITY_AT_SQL.format(scope=scope, rollup_scope=_rollup_scope_sql(tenant_scope, tenant_id))
        params["at"] = as_utc(at)
        params.update(rollup.instant_bounds(params["at"]), **rollup.head_hint(session))
    return [
        LiabilityLine(
            tenant_id=row["tenant_id"] or None,
            kind="pool" if row["kind"] == "tenant_pool" else "user",
            balance=int(row["balance"]),
            held=int(row["held"]),
        )
        for row in session.connection().exec_driver_sql(sql, params).mappings()
    ]


ExpiryBucket = Literal["day", "month"]

# The outstanding tokens by the UTC day or month their lots expire (NULL: never), from the lots with tokens left (their
# burn-order index covers the lots not spent); they add up to the tracked accounts' balances (reconciliation checks it).
_BY_EXPIRY_SQL = """
SELECT CAST(date_trunc(%(bucket)s, l.expires_at AT TIME ZONE 'UTC') AS date) AS expires_from,
       sum(l.remaining) AS balance, sum(l.held) AS held
FROM credit_lots l
WHERE NOT l.spent {scope}
GROUP BY 1 ORDER BY 1 NULLS FIRST
"""


def liability_by_expiry(
    session: Session, *, bucket: ExpiryBucket, tenant_scope: int | None, tenant_id: int | None
) -> list[ExpiryLiability]:
    """Tokens outstanding now, by when their credit lots expire: never, then per UTC day or month."""
    scope, params = _scope_sql(tenant_scope, tenant_id, column="l.tenant_id")
    params["bucket"] = bucket
    return [
        ExpiryLiability(
            expires_from=row["expires_from"],
            expires_before=None if row["expires_from"] is None else _bucket_end(row["expires_from"], bucket),
            balance=int(row["balance"]),
            held=int(row["held"]),
            available=int(row["balance"]) - int(row["held"]),
        )
        for row in session.connection().exec_driver_sql(_BY_EXPIRY_SQL.format(scope=scope), params).mappings()
    ]


def _bucket_end(start: date, bucket: ExpiryBucket) -> date:
    if bucket == "day":
        return start + timedelta(days=1)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)  # the first of the next month


def _line(balance: int, held: int) -> Liability:
    return Liability(balance=balance, held=held, available=balance - held)


def liability_report(
    session: Session,
    *,
    at: datetime | None,
    tenant_scope: int | None,
    tenant_id: int | None,
    expiry_bucket: ExpiryBucket = "month",
) -> LiabilityReport:
    """`liability`'s lines summed: in total, per account kind, and per tenant (the API's and the console's
    report); now, also split by when the tokens expire (`liability_by_expiry`). Lots keep no history per bucket,
    so a past instant has no split."""
    lines = liability(session, at=at, tenant_scope=tenant_scope, tenant_id=tenant_id)
    per_tenant: dict[int | None, dict[str, list[int]]] = defaultdict(lambda: {"user": [0, 0], "pool": [0, 0]})
    kinds: dict[str, list[int]] = {"user": [0, 0], "pool": [0, 0]}
    for line in lines:
        for bucket in (per_tenant[line.tenant_id][line.kind], kinds[line.kind]):
            bucket[0] += line.balance
            bucket[1] += line.held
    tenants: list[TenantLiability] = []
    for tenant, parts in sorted(per_tenant.items(), key=lambda item: item[0] or 0):
        users, pool = parts["user"], parts["pool"]
        tenants.append(
            TenantLiability(
                tenant_id=tenant,
                users=_line(*users),
                pool=_line(*pool),
                total=_line(users[0] + pool[0], users[1] + pool[1]),
            )
        )
    user_total, pool_total = kinds["user"], kinds["pool"]
    return LiabilityReport(
        at=at,
        users=_line(*user_total),
        pool=_line(*pool_total),
        total=_line(user_total[0] + pool_total[0], user_total[1] + pool_total[1]),
        tenants=tenants,
        by_expiry=None
        if at is not None
        else liability_by_expiry(session, bucket=expiry_bucket, tenant_scope=tenant_scope, tenant_id=tenant_id),
    )
