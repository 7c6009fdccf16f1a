"""The dashboard's figures, one flow for the API (GET /admin/v1/reports/dashboard) and the console's front page.

Every query is bounded and index-backed:
- tokens per day: the last 30 days in the viewer's zone, from `ledger_transactions` by `created_at` (its index)
  joined to their entries; recharged and consumed count what reached or left user and pool accounts, so a pool
  handing tokens to its users nets to zero, as in the finance daily report;
- jobs per hour by status: the last 48 hours, from `jobs` by `created_at`;
- top tenants by tokens consumed over the same 30 days;
- tokens held now (open holds: a partial index), jobs queued and running (partial indexes), the webhook backlog
  (pending events: a partial index), the Redis queue's length, the last reconciliation run, the seals' heads.

The 30-day and 48-hour aggregates read every transaction and job of their window: with a million ledger entries
written in a day that is a second's work, so they are kept in Redis for `CHARTS_CACHE_SECONDS` per tenant scope
and zone (the page says when they were computed). The live figures are read at every request."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redis import Redis
from rq import Queue
from sqlalchemy import text
from sqlalchemy.orm import Session

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
    # The caller's tenant only, or every tenant for staff: the raw-SQL form of facemint.tenancy.within_tenant.
    return "" if tenant_scope is None else f" AND {column} = :tenant_scope"


_DAILY_SQL = """
SELECT (t.created_at AT TIME ZONE :zone)::date AS day,
       coalesce(sum(e.amount) FILTER (WHERE t.kind = 'recharge'), 0) AS recharged,
       coalesce(-sum(e.amount) FILTER (WHERE t.kind = 'capture'), 0) AS consumed
FROM ledger_transactions t
JOIN ledger_entries e ON e.transaction_id = t.id
JOIN ledger_accounts a ON a.id = e.account_id
WHERE t.created_at >= :start AND t.kind IN ('recharge', 'capture') AND a.balance_tracked{scope}
GROUP BY 1
"""

_TOP_TENANTS_SQL = """
SELECT a.tenant_id, tn.name, -sum(e.amount) AS consumed
FROM ledger_transactions t
JOIN ledger_entries e ON e.transaction_id = t.id
JOIN ledger_accounts a ON a.id = e.account_id
JOIN tenants tn ON tn.id = a.tenant_id
WHERE t.created_at >= :start AND t.kind = 'capture' AND a.balance_tracked
GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT :n
"""

# Hour buckets by elapsed time from the window's first instant: a zone's hours start at the same minute past the
# UTC hour all year (offsets move by whole hours), so this is the zone's hours without naming the zone.
_HOURLY_SQL = """
SELECT floor(extract(epoch FROM j.created_at - :start) / 3600)::int AS bucket, j.status, count(*) AS n
FROM jobs j WHERE j.created_at >= :start{scope}
GROUP BY 1, 2
"""


def _charts(session: Session, *, tenant_scope: int | None, tz: ZoneInfo, now: datetime) -> DashboardCharts:
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    day_start = {d: datetime.combine(d, time(), tzinfo=tz).astimezone(UTC) for d in days}
    params: dict[str, object] = {"zone": tz.key, "start": day_start[days[0]], "tenant_scope": tenant_scope}
    rows = session.execute(text(_DAILY_SQL.format(scope=_scope("a.tenant_id", tenant_scope))), params)
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
            for r in session.execute(text(_TOP_TENANTS_SQL), {"start": day_start[days[0]], "n": TOP_TENANTS})
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
    return StreamSealRead(
        stream=digest.stream,
        seq=digest.seq,
        sealed_at=digest.sealed_at,
        last_id=digest.last_id,
        seals=digest.seals,
        rows=digest.rows,
        hash=digest.hash,
    )
