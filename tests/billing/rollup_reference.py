"""The dashboard's and the finance daily report's queries as they were before the journal's rollup, straight over
the ledger entries: the reference the rollup-backed reports must match number for number."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.orm import Session

from facemint.finance.reports import DailyRow
from facemint.reports.dashboard import DAYS, TOP_TENANTS
from facemint.reports.schemas import DayTokens, TenantConsumption
from facemint.tenancy import sql_conditions

DASHBOARD_DAILY_SQL = """
SELECT (t.created_at AT TIME ZONE :zone)::date AS day,
       coalesce(sum(e.amount) FILTER (WHERE t.kind = 'recharge'), 0) AS recharged,
       coalesce(-sum(e.amount) FILTER (WHERE t.kind = 'capture'), 0) AS consumed
FROM ledger_transactions t
JOIN ledger_entries e ON e.transaction_id = t.id
JOIN ledger_accounts a ON a.id = e.account_id
WHERE t.created_at >= :start AND t.kind IN ('recharge', 'capture') AND a.balance_tracked{scope}
GROUP BY 1
"""

DASHBOARD_TOP_TENANTS_SQL = """
SELECT a.tenant_id, tn.name, -sum(e.amount) AS consumed
FROM ledger_transactions t
JOIN ledger_entries e ON e.transaction_id = t.id
JOIN ledger_accounts a ON a.id = e.account_id
JOIN tenants tn ON tn.id = a.tenant_id
WHERE t.created_at >= :start AND t.kind = 'capture' AND a.balance_tracked
GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT :n
"""

FINANCE_DAILY_SQL = """
WITH acct AS (
    SELECT id, coalesce(tenant_id, 0) AS tenant_id FROM ledger_accounts a WHERE a.balance_tracked {scope}
),
opening AS (
    SELECT a.tenant_id, sum(e.amount) AS amount
    FROM ledger_entries e JOIN acct a ON a.id = e.account_id
    WHERE e.created_at < %(start)s GROUP BY a.tenant_id
),
moves AS (
    SELECT a.tenant_id, (e.created_at AT TIME ZONE 'UTC')::date AS day,
           coalesce(sum(e.amount) FILTER (WHERE t.kind = 'recharge'), 0) AS recharged,
           coalesce(-sum(e.amount) FILTER (WHERE t.kind = 'capture'), 0) AS consumed,
           coalesce(sum(e.amount) FILTER (WHERE t.kind IN ('adjustment', 'reversal')), 0) AS adjustments
    FROM ledger_entries e JOIN acct a ON a.id = e.account_id JOIN ledger_transactions t ON t.id = e.transaction_id
    WHERE e.created_at >= %(start)s AND e.created_at < %(end)s
    GROUP BY 1, 2
),
released AS (
    SELECT a.tenant_id, (h.resolved_at AT TIME ZONE 'UTC')::date AS day,
           sum(h.amount - coalesce(h.captured_amount, 0)) AS released
    FROM holds h JOIN acct a ON a.id = h.account_id
    WHERE h.status <> 'held' AND h.resolved_at >= %(start)s AND h.resolved_at < %(end)s
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
           coalesce(r.released, 0) AS released, coalesce(m.adjustments, 0) AS adjustments
    FROM grid g
    LEFT JOIN opening o ON o.tenant_id = g.tenant_id
    LEFT JOIN moves m ON m.tenant_id = g.tenant_id AND m.day = g.day
    LEFT JOIN released r ON r.tenant_id = g.tenant_id AND r.day = g.day
)
SELECT tenant_id, day, recharged, consumed, released, adjustments,
       opening_before + coalesce(sum(recharged - consumed + adjustments) OVER (
           PARTITION BY tenant_id ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS opening
FROM daily ORDER BY tenant_id, day
"""


def dashboard_days_and_top(
    session: Session, *, tenant_scope: int | None, tz: ZoneInfo, now: datetime
) -> tuple[list[DayTokens], list[TenantConsumption]]:
    """The dashboard's 30 days and top tenants, from the entries (as `facemint.reports.dashboard._charts` was)."""
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    day_start = {d: datetime.combine(d, time(), tzinfo=tz).astimezone(UTC) for d in days}
    scope = "" if tenant_scope is None else " AND a.tenant_id = :tenant_scope"
    params: dict[str, object] = {"zone": tz.key, "start": day_start[days[0]], "tenant_scope": tenant_scope}
    rows = session.execute(text(DASHBOARD_DAILY_SQL.format(scope=scope)), params)
    by_day: dict[date, tuple[int, int]] = {r.day: (int(r.recharged), int(r.consumed)) for r in rows}
    day_points = [
        DayTokens(day=d, start=day_start[d], recharged=by_day.get(d, (0, 0))[0], consumed=by_day.get(d, (0, 0))[1])
        for d in days
    ]
    top: list[TenantConsumption] = []
    if tenant_scope is None:
        top = [
            TenantConsumption(tenant_id=r.tenant_id, name=r.name, consumed=int(r.consumed))
            for r in session.execute(text(DASHBOARD_TOP_TENANTS_SQL), {"start": day_start[days[0]], "n": TOP_TENANTS})
        ]
    return day_points, top


def finance_daily(
    session: Session, *, first: date, last: date, tenant_scope: int | None, tenant_id: int | None
) -> list[DailyRow]:
    """The finance daily report from the entries (as `facemint.finance.reports.daily_report` was)."""
    parts, params = sql_conditions("a.tenant_id", tenant_scope=tenant_scope, tenant_id=tenant_id)
    scope = " ".join(f"AND {part}" for part in parts)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    params.update(start=start, end=end, first=first, last=last)
    rows = session.connection().exec_driver_sql(FINANCE_DAILY_SQL.format(scope=scope), params).mappings()
    return [
        DailyRow(
            tenant_id=row["tenant_id"] or None,
            day=row["day"],
            opening=int(row["opening"]),
            recharged=int(row["recharged"]),
            consumed=int(row["consumed"]),
            released=int(row["released"]),
            adjustments=int(row["adjustments"]),
            closing=int(row["opening"] + row["recharged"] - row["consumed"] + row["adjustments"]),
        )
        for row in rows
    ]
