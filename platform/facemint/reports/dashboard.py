"""The dashboard's figures, one flow for the API (GET /admin/v1/reports/dashboard) and the console's front page.

Every query is bounded and index-backed:
- tokens per day: the last 30 days in the viewer's zone, from the journal's rollup (billing.reports.rollup: sealed
  entries summed per 15-minute bucket, tenant and kinds, plus the entries not sealed yet); recharged and consumed
  count what reached or left user and pool accounts, so a pool handing tokens to its users nets to zero, as in the
  finance daily report;
- jobs per hour by status: the last 48 hours, from `jobs` by `created_at`;
- top tenants by tokens consumed over the same 30 days, from the rollup too;
- tokens held now (open holds: a partial index), jobs queued and running (partial indexes), the webhook backlog
  (pending events: a partial index), the Redis queue's length, the last reconciliation run, the seals' heads.

The charts are kept in Redis for `CHARTS_CACHE_SECONDS` per tenant scope and zone (the page says when they were
computed), which spares the database when many open the page; computing them reads thousands of rollup rows, not
the journal. The live figures are read at every request."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redis import Redis
from rq import Queue
from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.reports import rollup
from facemint.errors import Unprocessable
from facemint.reports import service
from facemint.reports.schemas import (
    DashboardCharts,
    DashboardRead,
    DayTokens,
    HourJobs,
    ReconciliationRunRead,
    StreamSealRead,
    TenantConsumption,
)
from facemint.tenancy import sql_conditions

DAYS = 30
HOURS = 48
TOP_TENANTS = 10
CHARTS_CACHE_SECONDS = 30
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
_CACHE_KEY = "facemint:dashboard:charts:v1:{scope}:{zone}"


class InvalidTimeZone(Unprocessable):
    code = "invalid_time_zone"
    title = "Unknown time zone"


def zone_named(name: str) -> ZoneInfo:
    """An IANA zone, or 422 `invalid_time_zone`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidTimeZone(f"unknown time zone: {name[:64]!r}") from None


def _scope(column: str, tenant_scope: int | None) -> str:
    # The caller's tenant only, or every tenant for staff (the statement binds :tenant_scope either way).
    parts, _ = sql_conditions(column, tenant_scope=tenant_scope, named=True)
    return "".join(f" AND {part}" for part in parts)


# A day in the zone is a run of whole 15-minute buckets (billing.reports.rollup), so each bucket's local date is
# that of every entry in it. Staff read the rollup's rows for every account (one per bucket and kinds), a tenant
# its own.
_DAILY_SQL = """
SELECT (m.bucket AT TIME ZONE :zone)::date AS day,
       coalesce(sum(m.amount) FILTER (WHERE m.transaction_kind = 'recharge'), 0) AS recharged,
       coalesce(-sum(m.amount) FILTER (WHERE m.transaction_kind = 'capture'), 0) AS consumed
FROM {movements} m
WHERE m.bucket >= :start AND m.transaction_kind IN ('recharge', 'capture')
  AND m.account_kind IN {tracked}{scope}
GROUP BY 1
"""

# Consumption per tenant since `start` (a quarter hour): whole UTC days from the daily rows, the part of a day
# before the first of them from each tenant's 15-minute rows (an index range per tenant), and the unsealed tail.
_TOP_TENANTS_SQL = f"""
WITH consumed AS (
    SELECT r.tenant_id, r.amount FROM ledger_rollups r
    WHERE r.span = '{rollup.DAY}' AND r.tenant_id > 0 AND r.bucket >= :whole_days
      AND r.transaction_kind = 'capture' AND r.account_kind IN {rollup.TRACKED_KINDS_SQL}
    UNION ALL
    SELECT q.tenant_id, q.amount FROM tenants tn CROSS JOIN LATERAL (
        SELECT r.tenant_id, r.amount FROM ledger_rollups r
        WHERE r.span = '{rollup.QUARTER}' AND r.tenant_id = tn.id AND r.bucket >= :start AND r.bucket < :whole_days
          AND r.transaction_kind = 'capture' AND r.account_kind IN {rollup.TRACKED_KINDS_SQL}
    ) q
    UNION ALL
    SELECT u.tenant_id, u.amount FROM {rollup.unsealed(rollup.QUARTER)} u
    WHERE u.bucket >= :start AND u.transaction_kind = 'capture' AND u.account_kind IN {rollup.TRACKED_KINDS_SQL}
)
SELECT c.tenant_id, tn.name, -sum(c.amount) AS consumed
FROM consumed c JOIN tenants tn ON tn.id = c.tenant_id
GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT :n
"""

# Hour buckets by elapsed time from the window's first instant: a zone's hours start at the same minute past the
# UTC hour all year (offsets move by whole hours), so this is the zone's hours without naming the zone.
_HOURLY_SQL = """
SELECT floor(extract(epoch FROM j.created_at - :start) / 3600)::int AS bucket, j.status, count(*) AS n
FROM jobs j WHERE j.created_at >= :start{scope}
GROUP BY 1, 2
"""


def _next_utc_midnight(at: datetime) -> datetime:
    """`at` if it is a UTC midnight, else the next one."""
    midnight = datetime.combine(at.astimezone(UTC).date(), time(), tzinfo=UTC)
    return midnight if midnight == at else midnight + timedelta(days=1)


def _charts(session: Session, *, tenant_scope: int | None, tz: ZoneInfo, now: datetime) -> DashboardCharts:
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    day_start = {d: datetime.combine(d, time(), tzinfo=tz).astimezone(UTC) for d in days}
    params: dict[str, object] = {"zone": tz.key, "start": day_start[days[0]], "tenant_scope": tenant_scope}
    params.update(rollup.head_hint(session))
    daily = _DAILY_SQL.format(
        movements=rollup.movements(rollup.QUARTER, every_tenant=tenant_scope is None),
        tracked=rollup.TRACKED_KINDS_SQL,
        # A principal's tenant (an existing tenant: never 0, the rollup's "no tenant"), as an index range.
        scope=_scope("m.tenant_id", tenant_scope),
    )
    rows = session.execute(text(daily), params)
    by_day: dict[date, tuple[int, int]] = {r.day: (int(r.recharged), int(r.consumed)) for r in rows}
    day_points = [
        DayTokens(day=d, start=day_start[d], recharged=by_day.get(d, (0, 0))[0], consumed=by_day.get(d, (0, 0))[1])
        for d in days
    ]

    local_hour = now.astimezone(tz).replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    first_hour = local_hour - timedelta(hours=HOURS - 1)
    counts: list[dict[str, int]] = [dict.fromkeys(JOB_STATUSES, 0) for _ in range(HOURS)]
    hourly = session.execute(
        text(_HOURLY_SQL.format(scope=_scope("j.tenant_id", tenant_scope))),
        {"start": first_hour, "tenant_scope": tenant_scope},
    )
    for row in hourly:
        if 0 <= row.bucket < HOURS:
            counts[row.bucket][row.status] = int(row.n)
    hour_points = [HourJobs(start=first_hour + timedelta(hours=i), counts=counts[i]) for i in range(HOURS)]

    top: list[TenantConsumption] = []
    if tenant_scope is None:
        top = [
            TenantConsumption(tenant_id=r.tenant_id, name=r.name, consumed=int(r.consumed))
            for r in session.execute(
                text(_TOP_TENANTS_SQL),
                {**params, "whole_days": _next_utc_midnight(day_start[days[0]]), "n": TOP_TENANTS},
            )
        ]
    return DashboardCharts(
        zone=tz.key, as_of=now, days=day_points, hours=hour_points, statuses=list(JOB_STATUSES), top_tenants=top
    )


def charts(
    session: Session, redis: Redis, *, tenant_scope: int | None, tz: ZoneInfo, fresh: bool = False
) -> DashboardCharts:
    """The 30-day and 48-hour aggregates, from the cache when it has them (`fresh=True` recomputes)."""
    key = _CACHE_KEY.format(scope="all" if tenant_scope is None else tenant_scope, zone=tz.key)
    if not fresh:
        cached = redis.get(key)
        if cached:
            return DashboardCharts.model_validate_json(cached)
    computed = _charts(session, tenant_scope=tenant_scope, tz=tz, now=datetime.now(UTC))
    redis.set(key, computed.model_dump_json(), ex=CHARTS_CACHE_SECONDS)
    return computed


_LIVE_SQL = """
SELECT
  (SELECT coalesce(sum(h.amount), 0) FROM holds h WHERE h.status = 'held'{holds}) AS tokens_held,
  (SELECT count(*) FROM jobs j WHERE j.status = 'queued'{jobs}) AS jobs_queued,
  (SELECT count(*) FROM jobs j WHERE j.status = 'running'{jobs}) AS jobs_running,
  (SELECT count(*) FROM webhook_events w WHERE w.status = 'pending'{hooks}) AS webhook_backlog,
  (SELECT min(w.next_attempt_at) FROM webhook_events w WHERE w.status = 'pending'{hooks}) AS webhook_oldest_due
"""


def dashboard(
    session: Session,
    redis: Redis,
    *,
    tenant_scope: int | None,
    tz: ZoneInfo,
    queue_name: str,
    fresh: bool = False,
) -> DashboardRead:
    """Everything the dashboard shows, limited to the caller's tenant (`tenant_scope`; None: staff, every tenant).
    The Redis queue, the reconciliation runs and the seals are platform-wide: staff only (None otherwise)."""
    sql = _LIVE_SQL.format(
        holds=_scope("h.tenant_id", tenant_scope),
        jobs=_scope("j.tenant_id", tenant_scope),
        hooks=_scope("w.tenant_id", tenant_scope),
    )
    live = session.execute(text(sql), {"tenant_scope": tenant_scope}).one()
    staff = tenant_scope is None
    last_run = service.latest_run(session) if staff else None
    return DashboardRead(
        charts=charts(session, redis, tenant_scope=tenant_scope, tz=tz, fresh=fresh),
        tenant_id=tenant_scope,
        tokens_held=int(live.tokens_held),
        jobs_queued=int(live.jobs_queued),
        jobs_running=int(live.jobs_running),
        queue_length=Queue(queue_name, connection=redis).count if staff else None,
        webhook_backlog=int(live.webhook_backlog),
        webhook_oldest_due=live.webhook_oldest_due,
        last_reconciliation=ReconciliationRunRead.model_validate(last_run, from_attributes=True) if last_run else None,
        sealed_books=[stream_seal(d) for d in service.books_status(session)] if staff else None,
    )


def stream_seal(digest: service.StreamDigest) -> StreamSealRead:
    return StreamSealRead.model_validate(digest, from_attributes=True)
