"""Limits on the finance exports, which each hold a database connection and a snapshot for as long as they stream.

- Concurrent exports are capped per tenant (`export_max_concurrent_per_tenant`; platform staff count as one tenant)
  and in total (`export_max_concurrent`), with Redis slots shared by every API process: beyond either, 429 with
  Retry-After, before any of the export's database work. A slot is released when its stream ends, however it ends,
  and lapses on its own `SLOT_MARGIN_SECONDS` after the time limit should the process die first.
- Each export's snapshot has a time limit (`export_max_seconds`, see `ExportStream(max_seconds=...)`)."""

from __future__ import annotations

from redis import Redis

from facemint import slots
from facemint.config import Settings
from facemint.finance.errors import TooManyExports

SLOT_MARGIN_SECONDS = 60
RETRY_AFTER_SECONDS = 15
PLATFORM_OWNER = "platform"  # the slot owner for platform staff (tenant scope None): one tenant among the others


def export_pools(settings: Settings, *, tenant_scope: int | None) -> list[slots.Pool]:
    owner = PLATFORM_OWNER if tenant_scope is None else str(tenant_scope)
    return [
        slots.Pool(
            name=f"exports:tenant:{owner}",
            limit=settings.export_max_concurrent_per_tenant,
            what="concurrent exports for this tenant",
            error=TooManyExports,
        ),
        slots.Pool(
            name="exports:all",
            limit=settings.export_max_concurrent,
            what="concurrent exports on this service",
            error=TooManyExports,
        ),
    ]


def slot_lifetime(settings: Settings) -> int:
    """How long a slot lives if nobody releases it: the longest an export may run, and a margin."""
    return settings.export_max_seconds + SLOT_MARGIN_SECONDS


def take_export_slot(redis: Redis, settings: Settings, *, tenant_scope: int | None) -> slots.Lease:
    """A slot in the caller's tenant's pool and in the total, or TooManyExports (429)."""
    return slots.acquire(
        redis,
        export_pools(settings, tenant_scope=tenant_scope),
        lifetime_seconds=slot_lifetime(settings),
        retry_after=RETRY_AFTER_SECONDS,
    )
