"""The webhook sender: claims due events fairly across tenants, leases them, posts them signed, records each
attempt.

Concurrency and fairness. Each worker process runs `webhook_concurrency` attempts at once; across all processes
a tenant has at most `webhook_max_in_flight_per_tenant` attempts in flight, counted in Postgres from live leases.
When a slot frees, the tenant with the fewest attempts in flight and, among equals, the oldest due event goes
next. Claims are serialised by a transaction-scoped advisory lock, so the per-tenant cap is exact. So a tenant
whose endpoint swallows packets ties up its own share of the senders, never everyone's: another tenant's event
waits at most one attempt's deadline for a slot (none at all while `webhook_concurrency` exceeds the cap).

Leases. A claim stamps the event with a fresh token and `lease_expires_at`, and moves `next_attempt_at` to the
same instant, so a leased event is not due and the due indexes skip it. A heartbeat extends the leases of
attempts in flight. An attempt starts only if its lease outlasts the attempt's whole deadline, so no lease runs
out under a live attempt; the heartbeat then keeps the lease alive until the outcome is recorded. Recording is
fenced by the token: a sender whose lease was taken over logs its attempt and changes nothing else. A sender that
dies leaves its events to be taken over once their leases expire.

Each attempt has one deadline (`webhook_timeout_seconds`) covering the name lookup, connect, TLS, sending and the
response head; the lookup runs on its own thread and is abandoned at the deadline (see urls.DeadlineResolver)."""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

import httpx
from sqlalchemy import func, text, update
from sqlalchemy.orm import Session

from facemint import tracing
from facemint.config import Settings
from facemint.webhooks.errors import InvalidWebhookUrl
from facemint.webhooks.orm import EventStatus, WebhookDelivery, WebhookEvent
from facemint.webhooks.service import encode_body, sign
from facemint.webhooks.transport import PinnedTransport
from facemint.webhooks.urls import DeadlineResolver, Resolver, ResolveTimeout, check_target

logger = logging.getLogger("facemint.webhooks")

USER_AGENT = "Facemint-Webhooks/1"
MAX_ERROR_LENGTH = 500
# A lease lasts the attempt's deadline plus this: time to record the outcome should a heartbeat be missed.
LEASE_MARGIN_SECONDS = 5.0
# An attempt starts only while its lease outlasts its deadline by at least this much (clock steps, latency).
START_MARGIN_SECONDS = 1.0
# No lease reaches further ahead than this. Live leases are counted in the window (now, now + this] of the
# (tenant_id, next_attempt_at) index, so the count never reads a tenant's whole backlog.
MAX_LEASE_SECONDS = 120.0
CLAIM_LOCK = "webhook-claims"


@dataclass(frozen=True, slots=True)
class Claim:
    """An event leased to this sender, with what its attempt needs."""

    id: int
    public_id: str
    tenant_id: int
    url: str
    payload: dict[str, Any]
    secret: str
    lease_token: str
    lease_seconds_left: float  # as the database measured it when the lease was granted


@dataclass(frozen=True, slots=True)
class Outcome:
    response_status: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.response_status is not None and 200 <= self.response_status < 300


# --- Claims and leases (each in the caller's transaction) ---------------------------------------------------

# Tenants with pending events are found by a loose index scan of ix_webhook_events_tenant_due (one probe per
# tenant, however long its backlog), each tenant's live leases are counted in a bounded window of that index, and
# each tenant offers at most its free share of its oldest due events. The fewest in flight (counting the ones
# this claim hands out) go first, then the oldest due.
CLAIM_CANDIDATES = text(
    """
    WITH RECURSIVE due_tenants(tenant_id) AS (
        (SELECT tenant_id FROM webhook_events WHERE status = 'pending' ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT e.tenant_id FROM webhook_events e
                 WHERE e.status = 'pending' AND e.tenant_id > d.tenant_id
                 ORDER BY e.tenant_id LIMIT 1)
          FROM due_tenants d
         WHERE d.tenant_id IS NOT NULL
    ),
    loads AS MATERIALIZED (
        SELECT d.tenant_id,
               (SELECT count(*) FROM webhook_events e
                 WHERE e.tenant_id = d.tenant_id AND e.status = 'pending'
                   AND e.next_attempt_at > statement_timestamp()
                   AND e.next_attempt_at <= statement_timestamp() + :max_lease * interval '1 second'
                   AND e.lease_expires_at > statement_timestamp()) AS in_flight
          FROM due_tenants d
         WHERE d.tenant_id IS NOT NULL
    )
    SELECT due.id
      FROM loads l
     CROSS JOIN LATERAL (
           SELECT e.id, e.next_attempt_at, row_number() OVER (ORDER BY e.next_attempt_at) - 1 AS rank
             FROM webhook_events e
            WHERE e.tenant_id = l.tenant_id AND e.status = 'pending'
              AND e.next_attempt_at <= statement_timestamp()
            ORDER BY e.next_attempt_at
            LIMIT :per_tenant
     ) due
     WHERE l.in_flight + due.rank < :cap
     ORDER BY l.in_flight + due.rank, due.next_attempt_at, due.id
     LIMIT :slots
    """
)

# Re-checked on the current row: an event settled, rescheduled or revived by its old holder meanwhile is skipped.
_LEASE = text(
    """
    UPDATE webhook_events e
       SET lease_token = :token,
           lease_expires_at = statement_timestamp() + :lease * interval '1 second',
           next_attempt_at = statement_timestamp() + :lease * interval '1 second'
     WHERE e.id = ANY(CAST(:ids AS bigint[])) AND e.status = 'pending' AND e.next_attempt_at <= statement_timestamp()
    RETURNING e.id, e.public_id, e.tenant_id, e.url, e.payload,
              -- read now, at send time: a rotated secret signs the next attempt of every pending event
              (SELECT t.webhook_secret FROM tenants t WHERE t.id = e.tenant_id) AS secret,
              extract(epoch FROM e.lease_expires_at - statement_timestamp()) AS lease_seconds_left
    """
)

_EXTEND = text(
    """
    UPDATE webhook_events e
       SET lease_expires_at = GREATEST(e.lease_expires_at, statement_timestamp() + :seconds * interval '1 second'),
           next_attempt_at = GREATEST(e.lease_expires_at, statement_timestamp() + :seconds * interval '1 second')
      FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS text[])) AS held(id, token)
     WHERE e.id = held.id AND e.lease_token = held.token AND e.status = 'pending'
    RETURNING e.id, extract(epoch FROM e.lease_expires_at - statement_timestamp()) AS lease_seconds_left
    """
)


def claim_due(session: Session, *, slots: int, max_in_flight_per_tenant: int, lease_seconds: float) -> list[Claim]:
    """Lease up to `slots` due events, fairly across tenants and within each tenant's cap of attempts in flight."""
    if slots <= 0:
        return []
    _check_lease(lease_seconds)
    # Claims queue behind each other: each counts the leases the previous one granted (its snapshot is taken
    # after the lock), so the per-tenant cap holds exactly.
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"), {"lock": CLAIM_LOCK})
    ids = session.scalars(
        CLAIM_CANDIDATES,
        {
            "slots": slots,
            "cap": max_in_flight_per_tenant,
            "per_tenant": min(slots, max_in_flight_per_tenant),
            "max_lease": MAX_LEASE_SECONDS,
        },
    ).all()
    if not ids:
        return []
    token = secrets.token_urlsafe(16)
    leased = session.execute(_LEASE, {"ids": list(ids), "token": token, "lease": lease_seconds}).all()
    rows = sorted(leased, key=lambda row: ids.index(row.id))  # the fair order, for whoever starts them in turn
    return [
        Claim(
            id=row.id,
            public_id=row.public_id,
            tenant_id=row.tenant_id,
            url=row.url,
            payload=row.payload,
            secret=row.secret,
            lease_token=token,
            lease_seconds_left=float(row.lease_seconds_left),
        )
        for row in rows
    ]


def extend_leases(session: Session, held: Sequence[tuple[int, str]], *, seconds: float) -> dict[int, float]:
    """Extend each (event id, lease token) still held to at least `seconds` from now; returns the seconds left
    on each lease still held (those taken over or settled are missing)."""
    if not held:
        return {}
    _check_lease(seconds)
    rows = session.execute(
        _EXTEND, {"ids": [event_id for event_id, _ in held], "tokens": [token for _, token in held], "seconds": seconds}
    ).all()
    return {row.id: float(row.lease_seconds_left) for row in rows}


def release(session: Session, claim: Claim) -> None:
    """Give back a lease without an attempt: the event is due again at once."""
    session.execute(
        update(WebhookEvent)
        .where(
            WebhookEvent.id == claim.id,
            WebhookEvent.lease_token == claim.lease_token,
            WebhookEvent.status == EventStatus.pending.value,
        )
        .values(lease_token=None, lease_expires_at=None, next_attempt_at=func.now())
    )


def record_outcome(session: Session, claim: Claim, outcome: Outcome, *, settings: Settings) -> bool:
    """Log the attempt and, while the lease is still this claim's, settle or reschedule the event and clear the
    lease. Returns whether the lease was still held."""
    row = session.get(WebhookEvent, claim.id, with_for_update=True, populate_existing=True)
    assert row is not None  # events are never deleted
    attempt = row.attempts + 1
    session.add(
        WebhookDelivery(
            event_id=row.id,
            attempt=attempt,
            response_status=outcome.response_status,
            error=outcome.error,
            duration_ms=outcome.duration_ms,
        )
    )
    row.attempts = attempt
    if row.status != EventStatus.pending.value or row.lease_token != claim.lease_token:
        # Taken over (or settled) by another sender: the attempt is logged, nothing else.
        logger.warning("webhook %s: attempt %d finished after its lease was taken over", row.public_id, attempt)
        return False
    row.lease_token = None
    row.lease_expires_at = None
    if outcome.ok:
        row.status = EventStatus.delivered.value
        row.delivered_at = func.now()
    elif attempt >= settings.webhook_max_attempts:
        row.status = EventStatus.failed.value
        logger.warning("webhook %s failed after %d attempts: %s", row.public_id, attempt, outcome.error)
    else:
        row.next_attempt_at = func.now() + timedelta(seconds=backoff_seconds(settings, attempts=attempt))
    return True


def backoff_seconds(settings: Settings, *, attempts: int) -> float:
    """The wait after `attempts` failed attempts: `webhook_backoff_seconds[attempts - 1]`, the last repeating."""
    schedule = settings.webhook_backoff_seconds
    if not schedule:
        return 0.0
    return float(schedule[min(attempts, len(schedule)) - 1])


def _check_lease(seconds: float) -> None:
    if not 0 < seconds <= MAX_LEASE_SECONDS:
        raise ValueError(f"a webhook lease lasts more than 0 and at most {MAX_LEASE_SECONDS:g} seconds")


# --- One attempt ---------------------------------------------------------------------------------------------


def send_attempt(
    claim: Claim, *, settings: Settings, resolver: DeadlineResolver, ssl_context: ssl.SSLContext
) -> Outcome:
    """POST the event once. Everything, the name lookup included, finishes by one deadline."""
    started = time.monotonic()
    deadline = started + settings.webhook_timeout_seconds

    def elapsed_ms() -> float:
        return round((time.monotonic() - started) * 1000, 3)

    try:
        target = check_target(
            claim.url,
            allowed_networks=settings.webhook_allowed_networks,
            resolve=resolver.until(deadline, key=claim.tenant_id),
        )
    except InvalidWebhookUrl as exc:
        return Outcome(response_status=None, error=_truncate(f"refused: {exc.detail}"), duration_ms=elapsed_ms())
    except ResolveTimeout as exc:
        return Outcome(response_status=None, error=_error_text(exc), duration_ms=elapsed_ms())
    body = encode_body(claim.payload)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": claim.public_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(claim.secret, msg_id=claim.public_id, timestamp=timestamp, body=body),
    }
    transport = PinnedTransport(
        addresses=[str(address) for address in target.addresses], deadline=deadline, ssl_context=ssl_context
    )
    try:
        with httpx.Client(
            transport=transport,
            follow_redirects=False,
            timeout=settings.webhook_timeout_seconds,
            trust_env=False,  # no proxies or .netrc from the environment
        ) as client:
            response = client.post(target.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(response_status=None, error=_error_text(exc), duration_ms=elapsed_ms())
    error = None
    if response.is_redirect:
        error = _truncate(f"redirects are not followed (Location: {response.headers.get('location', '')})")
    elif not response.is_success:
        error = f"HTTP {response.status_code}"
    return Outcome(response_status=response.status_code, error=error, duration_ms=elapsed_ms())


def _error_text(exc: BaseException) -> str:
    message = str(exc)
    return _truncate(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


# --- The sender ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Lease:
    token: str
    expires: float  # time.monotonic(); never later than the lease's end in the database
    lost: bool = False


class WebhookSender:
    """Up to `concurrency` attempts at once in this process, within each tenant's cap across all processes.

    `start()` runs a dispatcher thread that claims whenever a slot is free (at once when an attempt ends, else
    every `idle_seconds`) and a heartbeat thread; `stop()` lets attempts in flight finish and record their
    outcomes. `deliver_due()` is one synchronous round instead (tests, one-off runs)."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        *,
        settings: Settings,
        resolve: Resolver = socket.getaddrinfo,
        concurrency: int | None = None,
        lease_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
        idle_seconds: float = 1.0,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._concurrency = concurrency or settings.webhook_concurrency
        self._cap = settings.webhook_max_in_flight_per_tenant
        self._timeout = settings.webhook_timeout_seconds
        self._lease_seconds = lease_seconds or self._timeout + LEASE_MARGIN_SECONDS
        # What a lease must have left for an attempt to start, and what it is extended to when it has not.
        self._start_needs = self._timeout + START_MARGIN_SECONDS
        self._start_lease = max(self._lease_seconds, self._timeout + 2 * START_MARGIN_SECONDS)
        _check_lease(self._lease_seconds)
        _check_lease(self._start_lease)
        self._heartbeat_seconds = heartbeat_seconds or max(0.2, self._lease_seconds / 4)
        self._idle_seconds = idle_seconds
        self._attempts = ThreadPoolExecutor(self._concurrency, thread_name_prefix="webhook-send")
        self._resolver = DeadlineResolver(
            resolve, max_pending=2 * self._concurrency + self._cap, max_pending_per_key=self._cap
        )
        self._ssl_context = httpx.create_ssl_context()
        self._leases: dict[int, _Lease] = {}
        self._changed = threading.Condition()
        self._freed = 0  # slots freed so far: the dispatcher claims again as soon as it moves
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._dispatcher: threading.Thread | None = None
        self._heartbeat = threading.Thread(target=self._beat, name="webhook-heartbeat", daemon=True)

    # -- lifecycle

    def start(self) -> None:
        self._open()
        self._dispatcher = threading.Thread(target=self._dispatch, name="webhook-dispatcher", daemon=True)
        self._dispatcher.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, wait (at most `timeout`, by default an attempt's deadline plus the lease margin) for the
        attempts in flight to record their outcomes, then stop the heartbeat. Leases left behind expire."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        limit = time.monotonic() + (self._timeout + LEASE_MARGIN_SECONDS if timeout is None else timeout)
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, limit - time.monotonic()))
        with self._changed:
            self._changed.wait_for(lambda: not self._leases, timeout=max(0.0, limit - time.monotonic()))
            left = len(self._leases)
        if left:
            logger.warning("webhook sender stopped with %d attempts unfinished; their leases will expire", left)
        self._closed.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join(max(0.0, limit - time.monotonic()) + 1)
        self._attempts.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> WebhookSender:
        self._open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _open(self) -> None:
        if not self._heartbeat.is_alive() and not self._closed.is_set():
            self._heartbeat.start()

    # -- claiming

    def deliver_due(self, limit: int | None = None) -> int:
        """Claim up to `limit` due events (at most the free slots), attempt them concurrently and wait for every
        outcome; returns how many attempts were made."""
        self._open()
        with self._changed:
            free = self._concurrency - len(self._leases)
        claims = self._claim(free if limit is None else min(limit, free))
        futures = [self._attempts.submit(self._attempt, claim) for claim in claims]
        wait_all(futures)
        return len(claims)

    def in_flight(self) -> int:
        with self._changed:
            return len(self._leases)

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            with self._changed:
                freed = self._freed
                free = self._concurrency - len(self._leases)
            claims: list[Claim] = []
            if free > 0:
                try:
                    claims = self._claim(free)
                except Exception:
                    logger.warning("claiming webhooks failed; retrying in %.1fs", self._idle_seconds, exc_info=True)
            for claim in claims:
                try:
                    self._attempts.submit(self._attempt, claim)
                except RuntimeError:  # stopped while claiming: the lease is left to expire
                    with self._changed:
                        self._leases.pop(claim.id, None)
            # Every free slot filled: claim again at once (more may have freed meanwhile). Otherwise wait for a
            # slot to free (its tenant's next event may be waiting behind the cap) or for new events to be due.
            busy = free > 0 and len(claims) == free
            self._wait_for_a_slot(freed, timeout=0 if busy else self._idle_seconds)

    def _wait_for_a_slot(self, freed: int, *, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._stopping.is_set() or self._freed != freed, timeout=timeout)

    def _claim(self, slots: int) -> list[Claim]:
        if slots <= 0:
            return []
        asked_at = time.monotonic()
        with self._sessions() as session, session.begin():
            claims = claim_due(
                session, slots=slots, max_in_flight_per_tenant=self._cap, lease_seconds=self._lease_seconds
            )
        with self._changed:
            for claim in claims:
                # The lease began after `asked_at`, so this end is never later than the database's.
                self._leases[claim.id] = _Lease(claim.lease_token, asked_at + claim.lease_seconds_left)
        return claims

    # -- attempts

    def _attempt(self, claim: Claim) -> None:
        try:
            if self._ready(claim):
                with tracing.webhook_span(
                    event_id=claim.public_id, tenant_id=claim.tenant_id, payload=claim.payload
                ) as span:
                    try:
                        outcome = send_attempt(
                            claim, settings=self._settings, resolver=self._resolver, ssl_context=self._ssl_context
                        )
                    except Exception as exc:  # one broken event must not stop the sender; retried like a failure
                        logger.exception("webhook %s: unexpected error while sending", claim.public_id)
                        outcome = Outcome(response_status=None, error=_error_text(exc), duration_ms=0.0)
                    tracing.webhook_outcome(span, status=outcome.response_status, error=outcome.error)
                    self._record(claim, outcome)
            else:
                self._release(claim)
        except Exception:
            logger.exception("webhook %s: could not finish its attempt", claim.public_id)
        finally:
            with self._changed:
                self._leases.pop(claim.id, None)
                self._freed += 1
                self._changed.notify_all()

    def _ready(self, claim: Claim) -> bool:
        """Whether the lease outlasts the attempt's whole deadline, extending it once if it does not."""
        if self._lease_left(claim.id) >= self._start_needs:
            return True
        self._extend([claim.id], seconds=self._start_lease)
        if self._lease_left(claim.id) >= self._start_needs:
            return True
        logger.warning("webhook %s: lease too short for an attempt; given back", claim.public_id)
        return False

    def _lease_left(self, event_id: int) -> float:
        with self._changed:
            lease = self._leases.get(event_id)
            return -1.0 if lease is None or lease.lost else lease.expires - time.monotonic()

    def _record(self, claim: Claim, outcome: Outcome, *, tries: int = 5) -> None:
        # The heartbeat keeps the lease alive meanwhile, so a retry after a database hiccup is still fenced right.
        for attempt in range(1, tries + 1):
            try:
                with self._sessions() as session, session.begin():
                    record_outcome(session, claim, outcome, settings=self._settings)
                return
            except Exception:
                if attempt == tries or self._lease_left(claim.id) <= 0:
                    raise
                logger.warning("webhook %s: recording the outcome failed; retrying", claim.public_id, exc_info=True)
                time.sleep(min(1.0, self._heartbeat_seconds))

    def _release(self, claim: Claim) -> None:
        with self._sessions() as session, session.begin():
            release(session, claim)

    # -- heartbeat

    def _beat(self) -> None:
        while not self._closed.wait(self._heartbeat_seconds):
            with self._changed:
                held = [event_id for event_id, lease in self._leases.items() if not lease.lost]
            if held:
                self._extend(held, seconds=self._lease_seconds)

    def _extend(self, event_ids: Sequence[int], *, seconds: float) -> None:
        with self._changed:
            held = [(i, self._leases[i].token) for i in event_ids if i in self._leases]
        asked_at = time.monotonic()
        try:
            with self._sessions() as session, session.begin():
                left = extend_leases(session, held, seconds=seconds)
        except Exception:
            logger.warning("extending webhook leases failed", exc_info=True)
            return
        with self._changed:
            for event_id, token in held:
                lease = self._leases.get(event_id)
                if lease is None or lease.token != token:
                    continue
                if event_id in left:
                    lease.expires = max(lease.expires, asked_at + left[event_id])
                else:
                    lease.lost = True  # taken over or already settled; recording says which


def deliver_due(
    sessions: Callable[[], Session],
    *,
    settings: Settings,
    limit: int = 20,
    resolve: Resolver = socket.getaddrinfo,
) -> int:
    """One round by a short-lived sender: up to `limit` due events, attempted concurrently; returns how many."""
    with WebhookSender(sessions, settings=settings, resolve=resolve, concurrency=limit) as sender:
        return sender.deliver_due()
