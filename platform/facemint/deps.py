"""FastAPI dependencies: the request's session (the commit boundary), the caller, scope checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import anyio
from fastapi import Depends, Header, Query, Request
from redis import Redis
from sqlalchemy.orm import Session

from facemint import log_setup
from facemint.api_keys import keys
from facemint.auth import service as auth_service
from facemint.auth.errors import InsufficientScope
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.db import (
    forget_hooks,
    has_hooks,
    outside_transaction,
    run_after_commit,
    run_after_rollback,
    run_before_commit,
)
from facemint.errors import FacemintError, IdempotencyKeyRequired, InvalidIdempotencyKey, Unauthorized
from facemint.pagination import MAX_LIMIT, PageParams, decode_cursor
from facemint.ratelimit import RateLimiter, address_bucket, client_ip


# Dependencies that do no I/O are `async def`: FastAPI runs a sync dependency in the thread pool, and each hop
# costs more CPU than the dependency itself (measured: about 0.3 ms per hop on the submit path).
async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


# Commits, rollbacks and after-commit steps run on threads of their own. A request that took a row or advisory
# lock keeps it until its boundary commits, in a later thread hop than the work; were that hop to queue behind
# requests blocked on the very same lock (each holding one of the shared pool's threads), nothing would move until
# the database connection pool timed out. A commit never waits for a lock, so this pool always drains.
_BOUNDARY_THREADS = 64
_boundary_limiter: anyio.CapacityLimiter | None = None


async def _at_boundary(function: Callable[..., object], *args: object) -> None:
    global _boundary_limiter
    if _boundary_limiter is None:
        _boundary_limiter = anyio.CapacityLimiter(_BOUNDARY_THREADS)
    await anyio.to_thread.run_sync(function, *args, limiter=_boundary_limiter)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request. The request boundary commits when the endpoint returns (then runs the
    after-commit steps) and rolls back on any error (then runs the after-rollback steps); services only flush.

    Async, so that opening and closing cost no thread-pool hop: a session connects lazily, and only a commit or
    rollback of a transaction that really began does I/O, on the boundary's own threads. (Closing a session whose
    transaction ended does none: the pool's reset is a no-op on an idle psycopg2 connection.)"""
    session: Session = request.app.state.sessionmaker()
    try:
        try:
            yield session
        except BaseException:
            if session.in_transaction() or has_hooks(session):
                await _at_boundary(_rollback, session)
            raise
        if session.in_transaction():
            try:
                # One hop for the checks, the COMMIT and what follows it (queueing a job: a few Redis calls).
                await _at_boundary(_checked_commit, session)
            except BaseException:
                forget_hooks(session)  # a refused check ran its rollback steps; a failed COMMIT's outcome is unknown
                raise
        elif has_hooks(session):
            await _at_boundary(run_after_commit, session)
    finally:
        session.close()


def _rollback(session: Session) -> None:
    if session.in_transaction():
        session.rollback()
    run_after_rollback(session)


def rollback_in_this_thread(session: Session) -> None:
    """The boundary's rollback (then the after-rollback steps), run by an endpoint in its own thread-pool work when
    that work fails: the locks it took go with that hop, not a later one."""
    _rollback(session)


def commit_in_this_thread(session: Session) -> None:
    """The boundary's commit (its checks, COMMIT, then the after-commit steps), run by an endpoint at the end of its
    own thread-pool work instead of in a hop of its own after it returns (the submit: the work, COMMIT and queueing
    in one hop). A lock the work took is released in the same hop, so the boundary's reason for its own threads does
    not arise. Where the COMMIT itself failed (its outcome unknown), neither the after-commit nor the after-rollback
    steps run, as at the boundary."""
    try:
        _checked_commit(session)
    except BaseException:
        forget_hooks(session)
        raise


def _checked_commit(session: Session) -> None:
    """The before-commit checks, COMMIT and the after-commit steps, on one boundary thread. A check that refuses
    rolls back and runs the after-rollback steps (its error reaches the client, e.g. 429); only a failed COMMIT
    leaves the outcome unknown (then neither the after-commit nor the after-rollback steps run)."""
    try:
        run_before_commit(session)
    except BaseException:
        session.rollback()
        run_after_rollback(session)
        raise
    session.commit()
    run_after_commit(session)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RedisDep = Annotated[Redis, Depends(get_redis)]
# scope="function": the commit runs when the endpoint returns, before the response is sent, so a client never
# sees a success for a write that then failed to commit (the default scope commits after sending).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def authenticate(request: Request, session: SessionDep, settings: SettingsDep, redis: RedisDep) -> Principal:
    limiter: RateLimiter = request.app.state.limiter
    try:
        principal = _resolve(request, session, settings, redis)
    except FacemintError:
        # Only failures count against the caller's address (IPv6: its /64), and only failures are refused by it:
        # a valid key or token is never locked out by what other clients behind the same address sent. Keys
        # (190 bits) and signed tokens cannot be guessed, so the bucket bounds the lookups a prober costs us.
        ip = client_ip(request, settings.trusted_proxies)
        limiter.hit(
            request,
            [(f"anon-ip:{address_bucket(ip)}", settings.anonymous_limit_per_ip)],
            reason="too many failed attempts from this address",
        )
        raise
    # Before the rate limit: a refused request's lines name its caller too.
    log_setup.bind(tenant_id=principal.tenant_id, user_id=principal.user_id, api_key_id=principal.api_key_id)
    plan_limits = settings.plan_limits.get(principal.plan) or settings.plan_limits["free"]
    buckets = [(principal.rate_limit_subject, plan_limits["key"])]
    if principal.tenant_id is not None:
        buckets.append((f"tenant:{principal.tenant_id}", plan_limits["tenant"]))
    limiter.hit(request, buckets)
    request.state.principal = principal
    return principal


def _resolve(request: Request, session: Session, settings: Settings, redis: Redis) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send `Authorization: Bearer <access token or API key>`")
    if keys.looks_like_key(token):
        return auth_service.principal_from_api_key(session, settings, redis, token)
    return auth_service.principal_from_jwt(session, settings, token)


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def authenticate_released(request: Request, session: SessionDep, settings: SettingsDep, redis: RedisDep) -> Principal:
    """`authenticate`, for an endpoint that reads a (possibly long) upload next: its statements run outside a
    transaction (no BEGIN, no COMMIT: a key's last-use stamp commits as it is written), and the connection is back
    in the pool when this returns, in the same thread hop. Nothing is held while the body streams in; the session
    begins a new transaction, on a connection from the pool, at its next statement."""
    with outside_transaction(session):
        return authenticate(request, session, settings, redis)


ReleasedPrincipal = Annotated[Principal, Depends(authenticate_released)]


def _ensure_scopes(principal: Principal, scopes: tuple[Scope, ...]) -> Principal:
    missing = [s.value for s in scopes if s not in principal.scopes]
    if missing:
        raise InsufficientScope(f"missing scope: {', '.join(missing)}", missing=missing)
    return principal


def require(*scopes: Scope) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        return _ensure_scopes(principal, scopes)

    return check


def require_released(*scopes: Scope) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """`require`, authenticated by `authenticate_released`."""

    async def check(principal: ReleasedPrincipal) -> Principal:
        return _ensure_scopes(principal, scopes)

    return check


def request_context(request: Request, principal: Principal, settings: Settings) -> RequestContext:
    return RequestContext(
        principal=principal,
        request_id=getattr(request.state, "request_id", None),
        ip=client_ip(request, settings.trusted_proxies),
    )


IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"


async def idempotency_key_header(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_KEY_HEADER,
            description="required: 1 to 255 printable ASCII characters; the same key replays, another body is 409",
        ),
    ] = None,
) -> str:
    """Every money-moving write names an Idempotency-Key: 1 to 255 printable ASCII characters. Declared here as a
    header parameter, so the OpenAPI document names it (as required: see facemint.openapi), while a missing or
    malformed one answers 400 with its own code rather than a generic validation error."""
    key = (idempotency_key or "").strip()
    if not key:
        raise IdempotencyKeyRequired("the Idempotency-Key header is required")
    if len(key) > 255 or not key.isascii() or not key.isprintable():
        raise InvalidIdempotencyKey(
            "Idempotency-Key must be 1-255 printable ASCII characters",
        )
    return key


IdempotencyKey = Annotated[str, Depends(idempotency_key_header)]


async def page_params(
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> PageParams:
    return PageParams(before_id=decode_cursor(cursor), limit=limit)
