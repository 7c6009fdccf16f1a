"""The statements every submit runs (`facemint.jobs.service.submit`), prepared once per database connection: the
idempotency key's lock, the key's job and the tenant's active jobs, and the job's row."""

from __future__ import annotations

from facemint.db import PreparedStatement
from facemint.jobs.queries import JOB_COLUMNS

# Submits with the same key are serialised by this transaction-scoped lock, taken in a statement of its own: the
# next statement's snapshot is taken after the lock is granted, so it sees a duplicate that committed meanwhile.
KEY_LOCK = PreparedStatement(
    "fm_job_key_lock", "SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))", {"lock": "text"}
)
# Below `max_active_jobs - ACTIVE_CAP_MARGIN` active jobs, a submit is admitted on an unlocked count (see
# `facemint.jobs.service.ensure_within_active_cap` for the rest). The count stops at that bound: only whether it
# is reached matters, and a tenant's backlog never makes a submit read more than its cap's worth of index entries.
KEY_AND_ACTIVE = PreparedStatement(
    "fm_job_key_and_active",
    """
    SELECT (SELECT id FROM jobs WHERE user_id = :user_id AND idempotency_key = :idempotency_key) AS existing_id,
           (SELECT count(*) FROM (SELECT FROM jobs WHERE tenant_id = :tenant_id AND status IN ('queued', 'running')
                                  LIMIT :bound) AS live) AS active
    """,
    {"user_id": "bigint", "idempotency_key": "text", "tenant_id": "bigint", "bound": "bigint"},
)
INSERT_JOB = PreparedStatement(
    "fm_job_insert",
    f"""
    INSERT INTO jobs (public_id, tenant_id, user_id, api_key_id, account_id, hold_id, operation, queue,
                      idempotency_key, request_hash, price_version, tokens_per_unit, price_lines, units,
                      tokens_held, options, input_location, webhook_url, max_attempts, deadline_at, dispatched_at)
    VALUES (:public_id, :tenant_id, :user_id, :api_key_id, :account_id, :hold_id, :operation, :queue,
            :idempotency_key, :request_hash, :price_version, :tokens_per_unit, :price_lines, :units, :tokens,
            :options, :input_location, :webhook_url, :max_attempts,
            now() + make_interval(secs => :deadline_seconds), clock_timestamp())
    RETURNING {JOB_COLUMNS}
    """,
    {
        "public_id": "text",
        "tenant_id": "bigint",
        "user_id": "bigint",
        "api_key_id": "bigint",
        "account_id": "bigint",
        "hold_id": "bigint",
        "operation": "text",
        "queue": "text",
        "idempotency_key": "text",
        "request_hash": "bytea",
        "price_version": "integer",
        "tokens_per_unit": "bigint",
        "price_lines": "jsonb",
        "units": "integer",
        "tokens": "bigint",
        "options": "jsonb",
        "input_location": "text",
        "webhook_url": "text",
        "max_attempts": "integer",
        "deadline_seconds": "double precision",
    },
)
