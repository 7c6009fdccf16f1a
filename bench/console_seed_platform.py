"""The console benchmark's platform around the ledger (bench/console_seed.py runs these steps, in this order,
inside its seed): the users, their ledger accounts and API keys (temp tables su and st, which the ledger's plan
reads); the plan of the jobs (temp table sj, whose holds and captures the ledger writes); and, once the ledger is
written, the jobs themselves, their webhook events and deliveries, the audit trail of all of it, and later price
versions."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

_USERS_SQL = [
    """
    CREATE TEMP TABLE su AS
    SELECT row_number() OVER (ORDER BY a.ord, g) AS u, a.tenant_id, a.ord AS tenant_ord,
           CASE WHEN g = 1 THEN 'tenant_admin' ELSE 'member' END AS role,
           CASE WHEN g > 1 AND random() < 0.02 THEN 'frozen' ELSE 'active' END AS status,
           CAST(NULL AS bigint) AS user_id, CAST(NULL AS bigint) AS account_id,
           CAST(NULL AS timestamptz) AS created_at
    FROM unnest(CAST(:tenants AS bigint[]), CAST(:sizes AS int[])) WITH ORDINALITY AS a(tenant_id, n, ord),
         generate_series(1, a.n) AS g
    """,
    "UPDATE su SET created_at = CAST(:start AS timestamptz) + (u * 2.0 / :n_users) * interval '1 day'",
    "CREATE TEMP TABLE su_acc (u bigint, account_id bigint)",
    """
    WITH acc AS (
        INSERT INTO ledger_accounts (kind, tenant_id, balance_tracked, created_at)
        SELECT 'user', tenant_id, true, created_at FROM su ORDER BY u RETURNING id
    )
    INSERT INTO su_acc SELECT row_number() OVER (ORDER BY id), id FROM acc
    """,
    """
    WITH ins AS (
        INSERT INTO users (tenant_id, email, name, role, status, account_id, created_at, updated_at)
        SELECT su.tenant_id, 'u' || su.u || '@t' || su.tenant_ord || '.bench.test', 'User ' || su.u, su.role,
               su.status, a.account_id, su.created_at, su.created_at
        FROM su JOIN su_acc a USING (u) ORDER BY su.u
        RETURNING id, account_id
    )
    UPDATE su SET user_id = ins.id, account_id = ins.account_id
    FROM ins JOIN su_acc a ON a.account_id = ins.account_id WHERE su.u = a.u
    """,
    "CREATE UNIQUE INDEX ON su (u)",
    "CREATE INDEX ON su (tenant_id)",
    "ANALYZE su",
    # Each tenant's admin (the seeded one): who "made" its members, keys and recharges.
    """
    CREATE TEMP TABLE st AS
    SELECT t.id AS tenant_id, t.pool_account_id, a.user_id AS admin_id, a.tenant_ord
    FROM tenants t JOIN su a ON a.tenant_id = t.id AND a.role = 'tenant_admin'
    """,
    """
    INSERT INTO api_keys (public_id, user_id, tenant_id, name, scopes, secret_hash, created_by_user_id, created_at,
                          revoked_at, last_used_at)
    SELECT left(md5('key' || su.u), 12), su.user_id, su.tenant_id,
           CASE WHEN su.role = 'tenant_admin' THEN 'admin key' ELSE 'app ' || su.u END,
           CASE WHEN su.role = 'tenant_admin' THEN CAST(:admin_scopes AS text[]) ELSE CAST(:member_scopes AS text[])
           END,
           sha256(convert_to('secret' || su.u, 'UTF8')), st.admin_id, su.created_at + interval '1 hour',
           CASE WHEN su.u % 20 = 0 THEN su.created_at + interval '20 days' END,
           now() - random() * interval '3 days'
    FROM su JOIN st USING (tenant_id)
    WHERE su.role = 'tenant_admin' OR su.u % 10 = 0
    ORDER BY su.u
    """,
]

_JOBS_PLAN_SQL = """
CREATE TEMP TABLE sj AS
SELECT x.j, su.user_id, su.tenant_id, su.account_id, x.created_at, x.units,
       'job_' || substr(md5('job' || x.j || :salt), 1, 24) AS public_id,
       CASE WHEN x.j <= :queued THEN 'queued' WHEN x.j <= :queued + :running THEN 'running'
            WHEN x.r < 0.88 THEN 'succeeded' WHEN x.r < 0.96 THEN 'failed' ELSE 'canceled' END AS status,
       x.j % 5 < 2 AS wants_webhook, 1 + floor(random() * 4000) AS work_ms
FROM (
    SELECT j, random() AS r, 1 + floor(random() * 4) AS units,
           1 + floor(:n_users * power(random(), 1.5)) AS u,
           CASE WHEN j <= :queued + :running THEN now() - j * interval '1.5 seconds'
                ELSE now() - interval '3 minutes' - power(random(), 1.2) * interval '10 days' END AS created_at
    FROM generate_series(1, :jobs) AS j
) x JOIN su USING (u)
"""

_JOBS_WEBHOOKS_AUDIT_SQL = [
    # Jobs, as the submit path and the worker leave them.
    """
    INSERT INTO jobs (public_id, tenant_id, user_id, api_key_id, account_id, hold_id, operation, queue, status,
                      idempotency_key, request_hash, price_version, tokens_per_unit, units, tokens_held,
                      tokens_captured, options, input_location, result_location, result_content_type,
                      result_size_bytes, webhook_url, error_code, error_detail, attempts, max_attempts, worker_id,
                      timings_ms, created_at, dispatched_at, started_at, heartbeat_at, finished_at,
                      cancel_requested_at, deadline_at, inputs_deleted_at, result_expires_at, files_deleted_at,
                      result_purged_at)
    SELECT sj.public_id, sj.tenant_id, sj.user_id, k.id, sj.account_id, h.id, 'swap.image', 'swaps', sj.status,
           'req-' || sj.j, '\\x00', 1, 1, sj.units, sj.units,
           CASE WHEN sj.status = 'succeeded' THEN sj.units END,
           '{"faces": "all", "threshold": 0.5, "output_format": "jpeg", "quality": 90, "has_reference": false}',
           'inputs/' || sj.public_id,
           CASE WHEN sj.status = 'succeeded' THEN 'results/' || sj.public_id || '.jpg' END,
           CASE WHEN sj.status = 'succeeded' THEN 'image/jpeg' END,
           CASE WHEN sj.status = 'succeeded' THEN 120000 + sj.j % 250000 END,
           CASE WHEN sj.wants_webhook THEN 'https://hooks.example.com/facemint/' || sj.tenant_id END,
           CASE WHEN sj.status = 'failed'
                THEN (ARRAY['no_face_found', 'engine_error', 'deadline_exceeded'])[1 + sj.j % 3] END,
           CASE WHEN sj.status = 'failed' THEN 'the engine gave up on this input' END,
           CASE WHEN sj.status = 'queued' THEN 0 WHEN sj.status = 'failed' THEN 1 + sj.j % 3 ELSE 1 END, 3,
           CASE WHEN sj.status <> 'queued' THEN 'worker-' || sj.j % 4 END,
           CASE WHEN sj.status = 'succeeded' THEN jsonb_build_object(
               'decode', 8 + sj.j % 5, 'detect', 40 + sj.j % 30, 'swap', sj.work_ms * 0.6, 'paste', sj.work_ms * 0.3,
               'encode', 12 + sj.j % 9) END,
           sj.created_at, sj.created_at + interval '4 milliseconds',
           CASE WHEN sj.status <> 'queued' THEN sj.created_at + interval '40 milliseconds' END,
           CASE WHEN sj.status = 'running' THEN now() END,
           CASE WHEN sj.status IN ('succeeded', 'failed', 'canceled')
                THEN sj.created_at + (200 + sj.work_ms) * interval '1 millisecond' END,
           CASE WHEN sj.status = 'canceled' THEN sj.created_at + (100 + sj.work_ms) * interval '1 millisecond' END,
           sj.created_at + CASE WHEN sj.status IN ('queued', 'running') THEN interval '2 hours'
                                ELSE interval '10 minutes' END,
           CASE WHEN sj.status IN ('succeeded', 'failed', 'canceled')
                THEN sj.created_at + (200 + sj.work_ms) * interval '1 millisecond' END,
           CASE WHEN sj.status = 'succeeded' THEN sj.created_at + interval '1 day' END,
           CASE WHEN sj.status = 'succeeded' AND sj.created_at < now() - interval '1 day'
                THEN sj.created_at + interval '1 day' END,
           CASE WHEN sj.status = 'succeeded' AND sj.created_at < now() - interval '1 day'
                THEN sj.created_at + interval '1 day' END
    FROM sj JOIN holds h ON h.reference = 'job:' || sj.public_id
    LEFT JOIN LATERAL (SELECT id FROM api_keys WHERE user_id = sj.user_id ORDER BY id LIMIT 1) k ON true
    ORDER BY sj.created_at
    """,
    # Webhook events for the finished jobs that asked: mostly delivered, some failed, a pending backlog.
    """
    INSERT INTO webhook_events (public_id, job_id, tenant_id, event_type, url, payload, status, attempts,
                                next_attempt_at, created_at, delivered_at)
    SELECT 'evt_' || substr(md5('evt' || j.id), 1, 24), j.id, j.tenant_id, 'job.' || j.status, j.webhook_url,
           jsonb_build_object('type', 'job.' || j.status, 'timestamp', j.finished_at,
                              'data', jsonb_build_object('id', j.public_id, 'status', j.status,
                                                         'tokens_captured', j.tokens_captured)),
           s.status, CASE s.status WHEN 'delivered' THEN 1 WHEN 'failed' THEN 8 ELSE 1 + j.id % 3 END,
           CASE WHEN s.status = 'pending' THEN now() + (j.id % 300) * interval '1 second' ELSE j.finished_at END,
           j.finished_at, CASE WHEN s.status = 'delivered' THEN j.finished_at + interval '80 milliseconds' END
    FROM jobs j CROSS JOIN LATERAL (
        SELECT CASE WHEN j.id % 50 = 0 THEN 'failed' WHEN j.id % 25 = 1 THEN 'pending' ELSE 'delivered' END AS status
    ) s
    WHERE j.webhook_url IS NOT NULL AND j.finished_at IS NOT NULL
    ORDER BY j.finished_at
    """,
    """
    INSERT INTO webhook_deliveries (event_id, attempt, response_status, error, duration_ms, created_at)
    SELECT ev.id, a, CASE WHEN ev.status = 'delivered' THEN 200 ELSE 503 END,
           CASE WHEN ev.status = 'delivered' THEN NULL ELSE 'HTTP 503' END, 40 + (ev.id * a) % 200,
           ev.created_at + (a - 1) * interval '30 seconds'
    FROM webhook_events ev CROSS JOIN LATERAL generate_series(1, ev.attempts) AS a
    ORDER BY ev.id, a
    """,
    # The audit trail of what was seeded, in time order: users and keys made, recharges, batches, freezes.
    """
    INSERT INTO audit_events (occurred_at, actor_user_id, tenant_id, action, target_type, target_id, request_id,
                              ip, before, after)
    SELECT at, actor, tenant_id, action, target_type, target_id, 'seed-' || md5(action || target_id),
           CAST('10.1.' || (length(target_id) % 200) || '.' || (right(target_id, 2)::int % 250 + 1) AS inet),
           before, after
    FROM (
        SELECT su.created_at AS at, CASE WHEN su.role = 'tenant_admin' THEN :platform_admin ELSE st.admin_id END
               AS actor, su.tenant_id, 'user.create' AS action, 'user' AS target_type,
               CAST(su.user_id AS text) AS target_id, CAST(NULL AS jsonb) AS before,
               jsonb_build_object('id', su.user_id, 'role', su.role, 'status', 'active', 'tenant_id', su.tenant_id)
               AS after
        FROM su JOIN st USING (tenant_id)
        UNION ALL
        SELECT su.created_at + interval '20 days', st.admin_id, su.tenant_id, 'user.freeze', 'user',
               CAST(su.user_id AS text), jsonb_build_object('status', 'active'),
               jsonb_build_object('status', 'frozen')
        FROM su JOIN st USING (tenant_id) WHERE su.status = 'frozen'
        UNION ALL
        SELECT k.created_at, k.created_by_user_id, k.tenant_id, 'api_key.create', 'api_key', CAST(k.id AS text),
               NULL, jsonb_build_object('id', k.id, 'prefix', 'fmk_' || k.public_id || '_', 'name', k.name,
                                        'user_id', k.user_id, 'scopes', to_jsonb(k.scopes))
        FROM api_keys k WHERE k.created_by_user_id IS NOT NULL
        UNION ALL
        SELECT p.at, CAST(substr(p.actor, 6) AS bigint), p.tenant_id,
               CASE WHEN p.batch_id IS NULL THEN 'recharge.create' ELSE 'recharge.batch' END,
               CASE WHEN p.batch_id IS NULL THEN 'ledger_transaction' ELSE 'recharge_batch' END,
               CAST(coalesce(p.batch_id, m.id) AS text), NULL,
               jsonb_build_object('amount', p.amount, 'reason', p.reason, 'reference', p.reference,
                                  'transaction_id', m.id, 'source_account_id', p.src)
        FROM plan_tx p JOIN txmap m USING (n) WHERE p.kind = 'recharge'
    ) ev
    ORDER BY at
    """,
    # Later price versions for the prices screen, after the versions the migrations seed.
    """
    INSERT INTO prices (operation, version, tokens_per_unit, actor, note, created_at)
    SELECT 'swap.video', seeded.version + v.step, v.tokens, 'user:' || :platform_admin, v.note,
           CAST(:start AS timestamptz) + v.days * interval '1 day'
    FROM (SELECT coalesce(max(version), 0) AS version FROM prices WHERE operation = 'swap.video') seeded,
         (VALUES (1, 12, 'video launch', 0), (2, 10, 'volume discount', 30)) AS v(step, tokens, note, days)
    """,
]


def users_accounts_keys(session: Session, params: dict[str, object]) -> None:
    for statement in _USERS_SQL:
        session.execute(text(statement), params)


def plan_jobs(session: Session, params: dict[str, object]) -> None:
    session.execute(text(_JOBS_PLAN_SQL), params)


def jobs_webhooks_audit(session: Session, params: dict[str, object]) -> None:
    for statement in _JOBS_WEBHOOKS_AUDIT_SQL:
        session.execute(text(statement), params)
