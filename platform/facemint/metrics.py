"""`GET /metrics` in the Prometheus text exposition format (version 0.0.4), written by hand.

The API and the workers are separate processes, so only what this API process sees itself is kept in memory
(HTTP requests, by route template); everything shared is read at scrape time: jobs, tokens, holds past their expiry,
pending webhook events and the newest reconciliation run from Postgres; queue depth, the engine's stage timings
and the workers' heartbeats (both recorded by the workers) from Redis.

The HTTP series are per process: scrape each API process as its own target (with several uvicorn workers behind
one address a scrape sees one of them at random). The Postgres and Redis series are the same from every process.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate

from fastapi import APIRouter, FastAPI, Request, Response
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facemint.config import Environment, Settings
from facemint.deps import RedisDep, SessionDep, SettingsDep
from facemint.errors import NotFound, Unauthorized

logger = logging.getLogger("facemint.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENGINE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")

ENGINE_KEY_PREFIX = "facemint:metrics:engine:"
ENGINE_STAGES_KEY = ENGINE_KEY_PREFIX + "stages"  # a set: the stages seen so far, so a scrape knows what to read
# A sorted set: worker id -> Unix time of its last heartbeat. A worker that stops cleanly removes itself; one that
# died stays listed (its age growing, which is what the heartbeat alert sees) until this long after its last beat.
WORKER_HEARTBEATS_KEY = "facemint:metrics:worker-heartbeats"
WORKER_HEARTBEAT_RETENTION_SECONDS = 3600
# A worker is counted alive until it has missed this many heartbeats.
WORKER_ALIVE_BEATS = 3
_STAGE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# Any other method is counted as "other": the method is the client's to choose, and labels must stay bounded.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"

# A scrape must stay cheap and never hold a connection for long, whatever the tables' size.
_STATEMENT_TIMEOUT_MS = 5000


# --- the exposition format -------------------------------------------------------------------------------------


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


class _Exposition:
    """Lines of one scrape. Every family is written whole (HELP, TYPE, then all its samples), as the format
    requires."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Iterable[tuple[str, str]], value: float) -> None:
        rendered = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels)
        series = f"{name}{{{rendered}}}" if rendered else name
        self.lines.append(f"{series} {format_value(value)}")

    def histogram(
        self,
        name: str,
        labels: tuple[tuple[str, str], ...],
        bounds: tuple[float, ...],
        cumulative: list[int],
        total: float,
        count: int,
    ) -> None:
        """`cumulative[i]` counts the observations <= bounds[i]; +Inf is `count`."""
        for bound, observed in zip(bounds, cumulative, strict=True):
            self.sample(f"{name}_bucket", (*labels, ("le", format_value(bound))), observed)
        self.sample(f"{name}_bucket", (*labels, ("le", "+Inf")), count)
        self.sample(f"{name}_sum", labels, total)
        self.sample(f"{name}_count", labels, count)

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


# --- HTTP requests (this process, in memory) --------------------------------------------------------------------


@dataclass(slots=True)
class _Histogram:
    per_bucket: list[int]  # not cumulative; the last slot holds what is above every bound
    total: float = 0.0
    count: int = 0


class RequestMetrics:
    """This process's request counters. Written from the event loop, read from the endpoint's worker thread."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self._lock = threading.Lock()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _KNOWN_METHODS else "other"
        with self._lock:
            key = (method, route, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            histogram = self.durations.get((method, route))
            if histogram is None:
                histogram = self.durations[(method, route)] = _Histogram([0] * (len(HTTP_BUCKETS) + 1))
            histogram.per_bucket[bisect_left(HTTP_BUCKETS, seconds)] += 1
            histogram.total += seconds
            histogram.count += 1

    def write(self, out: _Exposition) -> None:
        with self._lock:
            requests = sorted(self.requests.items())
            durations = sorted((key, list(h.per_bucket), h.total, h.count) for key, h in self.durations.items())
        out.family("facemint_http_requests_total", "counter", "HTTP requests handled, by route template and status.")
        for (method, route, status), count in requests:
            out.sample(
                "facemint_http_requests_total", (("method", method), ("route", route), ("status", status)), count
            )
        out.family("facemint_http_request_duration_seconds", "histogram", "HTTP request duration, by route template.")
        for (method, route), per_bucket, total, count in durations:
            cumulative = list(accumulate(per_bucket[:-1]))  # the last slot (above every bound) is only in +Inf
            out.histogram(
                "facemint_http_request_duration_seconds",
                (("method", method), ("route", route)),
                HTTP_BUCKETS,
                cumulative,
                total,
                count,
            )


def _route_template(scope: Scope) -> str:
    # The router stores the matched route in the scope; its path is the template (`/v1/jobs/{job_id}`), never
    # the raw path, so ids stay out of the labels and the series stay few.
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


class MetricsMiddleware:
    """Counts every HTTP request by method, route template and status, and times it (pure ASGI: no buffering)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics if metrics is not None else RequestMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        except Exception:
            # Unhandled errors are answered by Starlette's outermost middleware, outside this one: a 500.
            if status is None:
                status = 500
            raise
        finally:
            # Still no status: cancelled (the client went away) before any answer; there is nothing to count.
            if status is not None:
                self.metrics.observe(scope["method"], _route_template(scope), status, time.perf_counter() - started)


# --- engine stage timings (written by the workers, in Redis) ------------------------------------------------------


def _stage_key(stage: str) -> str:
    return f"{ENGINE_KEY_PREFIX}stage:{stage}"


def record_stage_timings(redis: Redis, timings_ms: Mapping[str, float]) -> None:
    """Add one job's engine stage timings (milliseconds, as the engine reports them) to the shared histograms.

    One MULTI/EXEC, so a scrape never sees a count without its buckets. Best effort: a Redis error is logged,
    never raised, because a job's outcome must not depend on its metrics."""
    pipe = redis.pipeline(transaction=True)
    recorded = False
    for stage, milliseconds in timings_ms.items():
        if not _STAGE_NAME.fullmatch(stage) or not math.isfinite(milliseconds):
            continue  # a stray name or a NaN would poison the series for good
        seconds = max(0.0, milliseconds / 1000)
        key = _stage_key(stage)
        pipe.sadd(ENGINE_STAGES_KEY, stage)
        pipe.hincrbyfloat(key, "sum", seconds)
        pipe.hincrby(key, "count", 1)
        for bound in ENGINE_BUCKETS:
            if seconds <= bound:  # cumulative: an observation counts in every bucket at or above it
                pipe.hincrby(key, format_value(bound), 1)
        recorded = True
    if not recorded:
        return
    try:
        pipe.execute()
    except RedisError:
        logger.warning("could not record engine stage timings", exc_info=True)


# --- worker heartbeats (written by the workers, in Redis) ----------------------------------------------------------


def record_worker_heartbeat(redis: Redis, worker_id: str, *, now: float | None = None) -> None:
    """Stamp this worker's heartbeat (Unix time, this machine's clock) and drop entries past the retention.

    The workers' own heartbeat, not RQ's: RQ's SimpleWorker stamps its heartbeat only between jobs and when its
    idle wait for a job (about 7 minutes) ends, so it cannot tell a busy or idle worker from a dead one."""
    stamp = time.time() if now is None else now
    pipe = redis.pipeline(transaction=True)
    pipe.zadd(WORKER_HEARTBEATS_KEY, {worker_id: stamp})
    pipe.zremrangebyscore(WORKER_HEARTBEATS_KEY, "-inf", stamp - WORKER_HEARTBEAT_RETENTION_SECONDS)
    pipe.execute()


def forget_worker(redis: Redis, worker_id: str) -> None:
    """A worker that stops cleanly leaves the list at once: its silence is not a missing heartbeat."""
    redis.zrem(WORKER_HEARTBEATS_KEY, worker_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _write_redis_metrics(out: _Exposition, redis: Redis, settings: Settings) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.llen(Queue.redis_queue_namespace_prefix + settings.queue_name)
    pipe.smembers(ENGINE_STAGES_KEY)
    pipe.zrange(WORKER_HEARTBEATS_KEY, 0, -1, withscores=True)
    depth, stage_members, heartbeats = pipe.execute()
    now = time.time()
    # A worker's clock a little ahead of this one's reads as age 0, not a negative age.
    ages = sorted((_text(worker), max(0.0, now - float(stamp))) for worker, stamp in heartbeats)
    alive_within = WORKER_ALIVE_BEATS * settings.worker_heartbeat_seconds
    stages = sorted(_text(s) for s in stage_members)
    pipe = redis.pipeline(transaction=False)
    for stage in stages:
        pipe.hgetall(_stage_key(stage))
    stage_hashes = pipe.execute() if stages else []

    out.family("facemint_queue_depth", "gauge", "Jobs waiting in the RQ queue.")
    out.sample("facemint_queue_depth", (("queue", settings.queue_name),), int(depth))
    out.family("facemint_engine_stage_seconds", "histogram", "Engine stage durations per job, from every worker.")
    for stage, raw in zip(stages, stage_hashes, strict=True):
        values = {_text(k): _text(v) for k, v in raw.items()}
        count = int(values.get("count", 0))
        cumulative = [int(values.get(format_value(bound), 0)) for bound in ENGINE_BUCKETS]
        out.histogram(
            "facemint_engine_stage_seconds",
            (("stage", stage),),
            ENGINE_BUCKETS,
            cumulative,
            float(values.get("sum", 0.0)),
            count,
        )
    out.family(
        "facemint_workers_alive",
        "gauge",
        f"Workers that have missed fewer than {WORKER_ALIVE_BEATS} heartbeats.",
    )
    out.sample("facemint_workers_alive", (), sum(1 for _, age in ages if age <= alive_within))
    out.family(
        "facemint_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since each worker's last heartbeat; a worker that stopped without saying so stays listed for "
        f"{WORKER_HEARTBEAT_RETENTION_SECONDS} s.",
    )
    for worker, age in ages:
        out.sample("facemint_worker_heartbeat_age_seconds", (("worker", worker),), age)


# --- jobs, tokens and webhooks (Postgres) -----------------------------------------------------------------------

_JOBS_SQL = text("SELECT status, count(*) FROM jobs GROUP BY status")
# The single-valued series in one round trip. A captured hold releases what it did not capture, so released
# counts that remainder too. Holds still held past their own expiry are read through the partial index on open
# holds' expiry: the cost is the overdue rows' (normally none), whatever the table's size.
_TOTALS_SQL = text(
    """
SELECT (SELECT coalesce(sum(held), 0) FROM ledger_accounts) AS held,
       coalesce(sum(captured_amount) FILTER (WHERE status = 'captured'), 0) AS captured,
       coalesce(sum(amount - coalesce(captured_amount, 0)) FILTER (WHERE status <> 'held'), 0) AS released,
       (SELECT count(*) FROM webhook_events WHERE status = 'pending') AS webhooks_pending,
       (SELECT count(*) FROM holds WHERE status = 'held' AND expires_at < now()) AS holds_overdue,
       (SELECT coalesce(sum(amount), 0) FROM holds WHERE status = 'held' AND expires_at < now()) AS tokens_overdue
FROM holds
"""
)
# The newest reconciliation run (the primary key's last entry): the workers' periodic run, or one asked for from
# the CLI, the console or the API.
_RECONCILIATION_SQL = text(
    """
SELECT balanced, discrepancies, extract(epoch FROM ran_at)::float8 AS ran_at
FROM reconciliation_runs ORDER BY id DESC LIMIT 1
"""
)


def _write_database_metrics(out: _Exposition, session: Session) -> None:
    session.execute(text("SET TRANSACTION READ ONLY"))
    session.execute(text(f"SET LOCAL statement_timeout = {_STATEMENT_TIMEOUT_MS}"))
    jobs = {status: 0 for status in JOB_STATUSES}
    jobs.update({str(status): int(count) for status, count in session.execute(_JOBS_SQL)})
    totals = session.execute(_TOTALS_SQL).one()
    reconciliation = session.execute(_RECONCILIATION_SQL).one_or_none()

    out.family("facemint_jobs", "gauge", "Jobs by status.")
    for status, count in jobs.items():
        out.sample("facemint_jobs", (("status", status),), count)
    out.family("facemint_tokens_held", "gauge", "Tokens held by open holds.")
    out.sample("facemint_tokens_held", (), int(totals.held))
    out.family("facemint_tokens_captured_total", "counter", "Tokens captured from holds.")
    out.sample("facemint_tokens_captured_total", (), int(totals.captured))
    out.family(
        "facemint_tokens_released_total",
        "counter",
        "Tokens returned from holds: released, expired, and the uncaptured rest of captured holds.",
    )
    out.sample("facemint_tokens_released_total", (), int(totals.released))
    out.family(
        "facemint_tokens_held_past_deadline",
        "gauge",
        "Tokens in holds still held after their own expiry (a job's deadline plus its margin), which the "
        "sweepers release within one sweep.",
    )
    out.sample("facemint_tokens_held_past_deadline", (), int(totals.tokens_overdue))
    out.family("facemint_holds_past_deadline", "gauge", "Holds still held after their own expiry.")
    out.sample("facemint_holds_past_deadline", (), int(totals.holds_overdue))
    out.family("facemint_webhook_events_pending", "gauge", "Webhook events not yet delivered nor given up.")
    out.sample("facemint_webhook_events_pending", (), int(totals.webhooks_pending))
    # Declared always; no samples until a first run is recorded (the staleness alert sees the timestamp absent).
    newest: dict[str, float] = {}
    if reconciliation is not None:
        newest = {
            "ok": int(reconciliation.balanced),
            "discrepancies": int(reconciliation.discrepancies),
            "last_run_timestamp_seconds": float(reconciliation.ran_at),
        }
    for suffix, help_text in (
        ("ok", "Whether the newest reconciliation run balanced (1) or found discrepancies (0)."),
        ("discrepancies", "Checks that failed in the newest reconciliation run."),
        ("last_run_timestamp_seconds", "When the newest reconciliation run started (Unix time)."),
    ):
        out.family(f"facemint_reconciliation_{suffix}", "gauge", help_text)
        if suffix in newest:
            out.sample(f"facemint_reconciliation_{suffix}", (), newest[suffix])


# --- the endpoint -----------------------------------------------------------------------------------------------

router = APIRouter()


def _authorize(request: Request, settings: Settings) -> None:
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if not token:
        if settings.env is Environment.prod:
            raise NotFound("Not Found")  # as if there were no such route: prod never serves it unauthenticated
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Bytes: compare_digest refuses non-ASCII str, and a header may carry any byte.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("send `Authorization: Bearer <metrics token>`")


def render_metrics(request_metrics: RequestMetrics | None, session: Session, redis: Redis, settings: Settings) -> str:
    """One scrape. A source that fails is reported by `facemint_metrics_source_up` and left out, so the rest
    (the HTTP series above all) still reaches Prometheus while Postgres or Redis is down."""
    out = _Exposition()
    if request_metrics is not None:
        request_metrics.write(out)
    up: dict[str, int] = {}
    try:
        database = _Exposition()
        _write_database_metrics(database, session)
        out.lines += database.lines
        up["postgres"] = 1
    except SQLAlchemyError:
        logger.warning("metrics: Postgres read failed", exc_info=True)
        session.rollback()
        up["postgres"] = 0
    try:
        shared = _Exposition()
        _write_redis_metrics(shared, redis, settings)
        out.lines += shared.lines
        up["redis"] = 1
    except RedisError:
        logger.warning("metrics: Redis read failed", exc_info=True)
        up["redis"] = 0
    out.family("facemint_metrics_source_up", "gauge", "Whether this scrape could read the source (1) or not (0).")
    for source, value in up.items():
        out.sample("facemint_metrics_source_up", (("source", source),), value)
    return out.render()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, session: SessionDep, settings: SettingsDep, redis: RedisDep) -> Response:
    _authorize(request, settings)
    body = render_metrics(getattr(request.app.state, "request_metrics", None), session, redis, settings)
    return Response(content=body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


def install_metrics(app: FastAPI) -> None:
    """Counts this app's requests (call it after the other middleware is added, so this one is outermost and
    sees every answer) and serves `GET /metrics`. The counters live on `app.state`, one set per app."""
    request_metrics = RequestMetrics()
    app.state.request_metrics = request_metrics
    app.add_middleware(MetricsMiddleware, metrics=request_metrics)
    app.include_router(router)
