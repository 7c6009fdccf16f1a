"""The application factory: `create_app(settings)`; uvicorn uses `facemint.app:create_app --factory`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from facemint import health, tracing
from facemint.abuse.endpoints import rules_router as abuse_rules_router
from facemint.abuse.endpoints import triggers_router as abuse_triggers_router
from facemint.api_keys.endpoints import router as api_keys_router
from facemint.approvals.endpoints import router as approvals_router
from facemint.audit.endpoints import router as audit_router
from facemint.auth.endpoints import router as auth_router
from facemint.balance_alerts.endpoints import admin_router as balance_alerts_admin_router
from facemint.balance_alerts.endpoints import v1_router as balance_alerts_v1_router
from facemint.balances.endpoints import admin_router as balances_admin_router
from facemint.balances.endpoints import v1_router as balances_v1_router
from facemint.config import Environment, Settings, get_settings
from facemint.console.endpoints import install_console
from facemint.console.web import BULK_UPLOAD_PATH
from facemint.db import make_engine, make_sessionmaker
from facemint.finance.endpoints import router as finance_router
from facemint.grants.endpoints import router as grants_router
from facemint.integrations.zendesk import endpoints as zendesk_endpoints
from facemint.jobs import files
from facemint.jobs.admin_endpoints import router as jobs_admin_router
from facemint.jobs.endpoints import SWAPS_PATH, swap_body_limit
from facemint.jobs.endpoints import router as jobs_router
from facemint.metrics import install_metrics
from facemint.middleware import BodyLimitMiddleware, RequestIdMiddleware, TracingMiddleware
from facemint.openapi import install_openapi
from facemint.prices.endpoints import router as prices_router
from facemint.problems import install_error_handlers
from facemint.ratelimit import RateLimiter, RateLimitHeadersMiddleware
from facemint.recharges.endpoints import BATCH_PATH
from facemint.recharges.endpoints import router as recharges_router
from facemint.reports.endpoints import router as reports_router
from facemint.storage import make_storage
from facemint.tenants.endpoints import router as tenants_router
from facemint.users.endpoints import router as users_router
from facemint.webhooks.endpoints import admin_router as webhooks_admin_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    database_url, redis_url = settings.require_urls()
    engine = make_engine(database_url, pool_size=settings.database_pool_size, max_overflow=0)
    redis = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1, health_check_interval=30)
    # For what waits on the event loop without a thread (`Prefer: wait`): the same timeouts.
    async_redis = AsyncRedis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1, health_check_interval=30)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # With S3, uploads stage on this machine's disk, which no worker sweeps: the API clears its own leftovers.
        clearing = (
            asyncio.create_task(files.clear_stale_staging_periodically(lambda: app.state.storage, settings))
            if settings.storage_backend == "s3"
            else None
        )
        yield
        if clearing is not None:
            clearing.cancel()
        tracing.flush()
        engine.dispose()
        redis.close()
        await async_redis.aclose()

    dev = settings.env is Environment.dev
    app = FastAPI(
        title="Facemint",
        version="0.1.0",
        description="Token-metered face-swap API. Errors are RFC 9457 problem details with a stable `code`.",
        docs_url="/docs" if dev else None,
        redoc_url=None,
        openapi_url="/openapi.json" if dev else None,
        lifespan=lifespan,
        # Server spans are facemint.tracing's (without query strings, with the caller's ids); FastAPI's own would
        # start whenever some library sets a global tracer provider, and duplicate them.
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.redis = redis
    app.state.async_redis = async_redis
    app.state.limiter = RateLimiter(settings, redis_url=redis_url)
    app.state.storage = make_storage(settings)

    install_error_handlers(app)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=settings.max_body_bytes,
        path_limits={
            SWAPS_PATH: swap_body_limit(settings),
            BATCH_PATH: settings.batch_max_bytes,
            # The console's CSV upload: the batch limit, plus the multipart form's own few hundred bytes.
            BULK_UPLOAD_PATH: settings.batch_max_bytes + 64 * 1024,
        },
        path_tests=[
            # Zendesk's webhook carries a ticket event: capped well below the default, before a byte is read.
            (zendesk_endpoints.is_webhook, settings.zendesk_webhook_max_bytes),
            (zendesk_endpoints.is_asset_upload, settings.max_image_bytes),
        ],
    )
    if tracing.configure(settings, component="api"):
        app.add_middleware(TracingMiddleware)  # added first, so it runs inside RequestIdMiddleware
    app.add_middleware(RequestIdMiddleware)

    for router in (
        health.router,
        auth_router,
        balances_v1_router,
        balance_alerts_v1_router,
        jobs_router,
        tenants_router,
        users_router,
        api_keys_router,
        recharges_router,
        balances_admin_router,
        balance_alerts_admin_router,
        audit_router,
        reports_router,
        prices_router,
        webhooks_admin_router,
        finance_router,
        approvals_router,
        jobs_admin_router,
        zendesk_endpoints.webhook_router,
        zendesk_endpoints.admin_router,
        abuse_rules_router,
        abuse_triggers_router,
        grants_router,
    ):
        app.include_router(router)
    install_metrics(app)
    install_openapi(app)
    install_console(app)
    return app
