"""The console benchmark's data: a platform as it looks after ~60 days, written set-based (a few dozen statements
whatever the size) so that the ledger's own rules hold and reconciliation balances.

- ~200 tenants (through the tenants service: pool account, audit event), sized like real customers (a few large,
  a long tail), plans mixed, a few suspended;
- 100,000 users (a tenant admin per tenant, the rest members, ~2 % frozen) and their ledger accounts, an API key for
  each tenant admin and every tenth member (~5 % revoked);
- the ledger, ~1,000,000 entries in time order over the period: each pool bought from issuance first; one funding
  batch per tenant crediting all its users, then periodic batches to random subsets; single recharges pool -> user;
  captures user -> usage revenue, each from a captured hold. Captures older than the jobs table are holds
  referenced `usage:<n>` (the 10,000 jobs cannot account for 300,000 captures); the jobs' own captures are
  referenced `job:<public id>` like the product's. Every balance_after chains, every account's balance and held
  follow the journal and its open holds;
- 10,000 jobs over the last 10 days (succeeded, failed, canceled, and a live tail of queued and running ones with
  their holds still held), webhook events and deliveries for the jobs that asked (delivered, failed, a pending
  backlog), and the audit trail of all of it (user and key creation, recharges, batches, freezes);
- price versions, sealed books and a recorded reconciliation run come from the product's own services.

Approvals are made afterwards through the HTTP API (bench/console.py), so their payloads are the product's."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from billing.sealing import service as sealing
from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.auth.scopes import ROLE_SCOPES, Scope
from facemint.config import Settings
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan
from facemint.tenants.schemas import TenantCreate
from facemint.users import service as user_service
from facemint.users.orm import Role
from facemint.users.schemas import UserCreate

PASSWORD = "bench-console-password-1"  # noqa: S105 (a throw-away database's staff)


@dataclass(frozen=True)
class Scale:
    tenants: int = 200
    users: int = 100_000
    entries: int = 1_000_000
    jobs: int = 10_000
    days: int = 60
    periodic_batches: int = 200  # besides one funding batch per tenant


@dataclass
class Seeded:
    """Who signs in, and ids to fill the console's path parameters with (all inside `tenant_id`, the tenant
    admin's own tenant, so every role may open them)."""

    staff: dict[str, str] = field(default_factory=dict)  # role -> email (password PASSWORD)
    staff_ids: dict[str, int] = field(default_factory=dict)
    api_keys: dict[str, str] = field(default_factory=dict)  # role -> API key (for the API phase)
    ids: dict[str, object] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def tenant_sizes(scale: Scale) -> list[int]:
    """Users per tenant: a few large customers and a long tail (weights 1/(i+5)^0.9), at least 5 each."""
    weights = [1 / (i + 5) ** 0.9 for i in range(scale.tenants)]
    total = sum(weights)
    sizes = [max(5, int(scale.users * w / total)) for w in weights]
    sizes[0] += scale.users - sum(sizes)
    return sizes


def _people(session: Session, settings: Settings, scale: Scale, seeded: Seeded) -> list[int]:
    rng = random.Random(7)
    tenant_ids = []
    for i in range(scale.tenants):
        plan = Plan.enterprise if i < 10 else Plan.pro if i < 60 else Plan.free
        name = f"{rng.choice(['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli', 'Stark', 'Wayne'])} {i + 1:03d}"
        tenant = tenant_service.create(session, context=None, data=TenantCreate(name=name, plan=plan))
        tenant_ids.append(tenant.id)
    session.execute(
        text("UPDATE tenants SET status = 'suspended' WHERE id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": tenant_ids[-5:]},
    )
    for role, home in (
        (Role.platform_admin, None),
        (Role.operator, None),
        (Role.finance, None),
        (Role.tenant_admin, tenant_ids[0]),
    ):
        user = user_service.create(
            session,
            context=None,
            data=UserCreate(
                email=f"{role.value.replace('_', '-')}@console.bench.test",
                role=role,
                tenant_id=home,
                password=PASSWORD,
            ),
        )
        seeded.staff[role.value] = user.email
        seeded.staff_ids[role.value] = user.id
        if role in (Role.platform_admin, Role.operator):
            _, key = key_service.create(
                session,
                context=None,
                settings=settings,
                data=ApiKeyCreate(user_id=user.id, name="bench", scopes=sorted(Scope)),
            )
            seeded.api_keys[role.value] = key
    session.commit()
    return tenant_ids


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

# The plan of every ledger transaction (n = time order) and of its entries, before anything is written.
_PLAN_SQL = [
    """
    CREATE TEMP TABLE plan_tx (
        n bigint, at timestamptz NOT NULL, kind text NOT NULL, tenant_id bigint, src bigint, dst bigint,
        amount bigint, actor text, reason text, reference text, batch_no int, hold_ref text, prio int NOT NULL,
        k bigint NOT NULL, batch_id bigint, hold_id bigint, idem text
    )
    """,
    # Each pool bought from issuance before anything else (its amount is set once the pool's spending is known).
    """
    INSERT INTO plan_tx (at, kind, tenant_id, src, dst, actor, reason, reference, prio, k)
    SELECT CAST(:start AS timestamptz) - interval '1 day' + tenant_ord * interval '1 minute', 'recharge',
           tenant_id, :issuance, pool_account_id, 'user:' || :platform_admin, 'pool purchase',
           'PO-' || tenant_ord, 0, tenant_ord
    FROM st
    """,
    # Two more purchases by the larger half, a third and two thirds into the period.
    """
    INSERT INTO plan_tx (at, kind, tenant_id, src, dst, amount, actor, reason, reference, prio, k)
    SELECT CAST(:start AS timestamptz) + (:days * part / 3.0) * interval '1 day' + tenant_ord * interval '1 minute',
           'recharge', tenant_id, :issuance, pool_account_id, 10000 * (5 + floor(random() * 50)),
           'user:' || :platform_admin, 'pool purchase', 'PO-' || tenant_ord || '-' || part, 0, tenant_ord * 10 + part
    FROM st, generate_series(1, 2) AS part WHERE tenant_ord <= :n_tenants / 2
    """,
    # Batches: one funding batch per tenant on day 0 (every user), then periodic ones (given below).
    """
    CREATE TEMP TABLE plan_batch AS
    SELECT st.tenant_ord AS batch_no, st.tenant_id, st.pool_account_id, st.admin_id,
           CAST(:start AS timestamptz) + st.tenant_ord * interval '7 minutes' AS at, 'onboarding credit' AS reason,
           'atomic' AS mode, CAST(NULL AS int) AS rows
    FROM st
    UNION ALL
    SELECT :n_tenants + b.no, st.tenant_id, st.pool_account_id, st.admin_id,
           CAST(:start AS timestamptz) + b.offset_days * interval '1 day', b.reason, 'partial', b.rows
    FROM unnest(CAST(:b_tenants AS bigint[]), CAST(:b_days AS float8[]), CAST(:b_rows AS int[]),
                CAST(:b_reasons AS text[])) WITH ORDINALITY AS b(tenant_id, offset_days, rows, reason, no)
    JOIN st USING (tenant_id)
    """,
    """
    CREATE TEMP TABLE plan_batch_row AS
    SELECT b.batch_no, row_number() OVER (PARTITION BY b.batch_no ORDER BY r.u) AS row_no, r.account_id,
           CASE WHEN b.mode = 'atomic' THEN 2000 ELSE 100 * (1 + floor(random() * 9)) END AS amount
    FROM plan_batch b CROSS JOIN LATERAL (
        SELECT su.u, su.account_id FROM su
        WHERE su.tenant_id = b.tenant_id AND (b.rows IS NULL OR su.status = 'active')
        ORDER BY CASE WHEN b.rows IS NULL THEN 0 ELSE random() END, su.u
        LIMIT coalesce(b.rows, 2147483647)
    ) r
    """,
    """
    INSERT INTO plan_tx (at, kind, tenant_id, src, amount, actor, reason, batch_no, prio, k)
    SELECT b.at, 'recharge', b.tenant_id, b.pool_account_id, (SELECT sum(amount) FROM plan_batch_row r
                                                           WHERE r.batch_no = b.batch_no),
           'user:' || b.admin_id, b.reason, b.batch_no, 1, b.batch_no
    FROM plan_batch b
    """,
    # Single recharges pool -> user, any time after onboarding.
    """
    INSERT INTO plan_tx (at, kind, tenant_id, src, dst, amount, actor, reason, reference, prio, k)
    SELECT CAST(:start AS timestamptz) + (2 + random() * (:days - 2)) * interval '1 day', 'recharge', su.tenant_id,
           st.pool_account_id, su.account_id, 50 * (1 + floor(random() * 10)), 'user:' || st.admin_id,
           (ARRAY['monthly allowance', 'bonus', 'support credit', 'promotion'])[1 + g % 4],
           CASE WHEN g % 3 = 0 THEN 'INV-' || g END, 2, g
    FROM (SELECT g, 1 + floor(random() * :n_users) AS u FROM generate_series(1, :singles) AS g) x
    JOIN su USING (u) JOIN st USING (tenant_id)
    """,
    # Captures of earlier usage (heavier users and larger tenants use more: u drawn as n_users * random()^1.5).
    """
    INSERT INTO plan_tx (at, kind, tenant_id, src, dst, amount, hold_ref, prio, k)
    SELECT CAST(:start AS timestamptz) + (3 + random() * (:days - 3)) * interval '1 day' - interval '1 hour',
           'capture', su.tenant_id, su.account_id, :revenue, 1 + floor(random() * 10), 'usage:' || g, 3, g
    FROM (SELECT g, 1 + floor(:n_users * power(random(), 1.5)) AS u FROM generate_series(1, :captures) AS g) x
    JOIN su USING (u)
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

_JOB_CAPTURES_SQL = """
INSERT INTO plan_tx (at, kind, tenant_id, src, dst, amount, hold_ref, prio, k)
SELECT created_at + (200 + work_ms) * interval '1 millisecond', 'capture', tenant_id, account_id, :revenue, units,
       'job:' || public_id, 4, j
FROM sj WHERE status = 'succeeded'
"""

_NUMBER_SQL = [
    # Pools pay for what they hand out, plus some left over (what staff see as the pool balance).
    """
    UPDATE plan_tx p SET amount = coalesce(s.spent, 0) + 20000 * (1 + st.tenant_ord % 7)
    FROM st LEFT JOIN (SELECT src, sum(amount) AS spent FROM plan_tx WHERE src IS NOT NULL GROUP BY src) s
         ON s.src = st.pool_account_id
    WHERE p.amount IS NULL AND p.dst = st.pool_account_id
    """,
    """
    UPDATE plan_tx p SET n = o.n
    FROM (SELECT ctid AS c, row_number() OVER (ORDER BY at, prio, k) AS n FROM plan_tx) o WHERE p.ctid = o.c
    """,
    "CREATE UNIQUE INDEX ON plan_tx (n)",
    "ANALYZE plan_tx",
    # Recharge batches as billing.recharge writes them (their stored result is completed once the ids exist).
    """
    INSERT INTO recharge_batches (idempotency_key, request_hash, mode, tenant_id, actor, reason, source_account_id,
                                  row_count, applied_count, failed_count, total_amount, result, created_at)
    SELECT 'batch:user:' || b.admin_id || '\\:seed-' || b.batch_no, '\\x00', b.mode, b.tenant_id,
           'user:' || b.admin_id, b.reason, b.pool_account_id, p_rows.n, p_rows.n, 0, p.amount, '{}', b.at
    FROM plan_batch b JOIN plan_tx p ON p.batch_no = b.batch_no
    JOIN (SELECT batch_no, count(*) AS n FROM plan_batch_row GROUP BY batch_no) p_rows ON p_rows.batch_no = b.batch_no
    ORDER BY b.at
    """,
    """
    UPDATE plan_tx p SET batch_id = rb.id, idem = 'batch:' || rb.id
    FROM plan_batch b, recharge_batches rb
    WHERE p.batch_no = b.batch_no AND rb.idempotency_key = 'batch:user:' || b.admin_id || '\\:seed-' || b.batch_no
    """,
    # Holds: every capture's (captured), and the jobs' that captured nothing (released, or held while live).
    """
    INSERT INTO holds (account_id, tenant_id, amount, status, captured_amount, reference, metadata, expires_at,
                       created_at, resolved_at)
    SELECT src, tenant_id, amount, 'captured', amount, hold_ref,
           CASE WHEN hold_ref LIKE 'job:%' THEN jsonb_build_object('job', substr(hold_ref, 5),
                                                                   'operation', 'swap.image') END,
           at + interval '11 minutes', at - interval '3 seconds', at
    FROM plan_tx WHERE kind = 'capture' ORDER BY n
    """,
    """
    INSERT INTO holds (account_id, tenant_id, amount, status, reference, metadata, expires_at, created_at,
                       resolved_at)
    SELECT account_id, tenant_id, units,
           CASE WHEN status IN ('queued', 'running') THEN 'held' ELSE 'released' END, 'job:' || public_id,
           jsonb_build_object('job', public_id, 'operation', 'swap.image'),
           created_at + CASE WHEN status IN ('queued', 'running') THEN interval '2 hours 1 minute'
                             ELSE interval '11 minutes' END, created_at,
           CASE WHEN status IN ('failed', 'canceled') THEN created_at + (200 + work_ms) * interval '1 millisecond' END
    FROM sj WHERE status <> 'succeeded' ORDER BY created_at
    """,
    """
    UPDATE plan_tx p SET hold_id = h.id, idem = 'hold-capture:' || h.id
    FROM holds h WHERE p.kind = 'capture' AND h.reference = p.hold_ref
    """,
    "UPDATE plan_tx SET idem = 'recharge:' || actor || '\\:seed-' || n WHERE idem IS NULL",
    """
    INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, amount, tenant_id, actor, reason,
                                     reference, batch_id, hold_id, created_at)
    SELECT kind, idem, '\\x00', amount, tenant_id, actor, reason, coalesce(reference, hold_ref), batch_id, hold_id, at
    FROM plan_tx ORDER BY n
    """,
    "CREATE TEMP TABLE txmap AS SELECT p.n, t.id FROM plan_tx p "
    "JOIN ledger_transactions t ON t.idempotency_key = p.idem",
    "CREATE UNIQUE INDEX ON txmap (n)",
    # Entries with their balance_after: a running sum per tracked account, in journal order.
    """
    CREATE TEMP TABLE plan_entry AS
    SELECT e.n, e.ord, e.account_id, e.amount, e.row_no,
           CASE WHEN e.account_id IN (:issuance, :revenue) THEN NULL
                ELSE sum(e.amount) OVER (PARTITION BY e.account_id ORDER BY e.n, e.ord) END AS balance_after
    FROM (
        SELECT n, 0 AS ord, src AS account_id, -amount AS amount, CAST(NULL AS int) AS row_no FROM plan_tx
        UNION ALL
        SELECT n, 1, dst, amount, NULL FROM plan_tx WHERE dst IS NOT NULL
        UNION ALL
        SELECT p.n, 1 + r.row_no, r.account_id, r.amount, r.row_no FROM plan_batch_row r JOIN plan_tx p USING (batch_no)
    ) e
    """,
    "CREATE INDEX ON plan_entry (n)",
]

_ENTRIES_SQL = """
INSERT INTO ledger_entries (transaction_id, account_id, amount, balance_after, row_no, created_at)
SELECT m.id, e.account_id, e.amount, e.balance_after, e.row_no, p.at
FROM plan_entry e JOIN txmap m USING (n) JOIN plan_tx p USING (n)
WHERE e.n BETWEEN :first AND :last
ORDER BY e.n, e.ord
"""

_AFTER_LEDGER_SQL = [
    # The accounts follow their journal (a database rule checks it) and their open holds.
    """
    UPDATE ledger_accounts a SET balance = coalesce(s.balance, a.balance), held = coalesce(h.held, 0),
                                 version = a.version + 1
    FROM ledger_accounts a2
    LEFT JOIN (SELECT account_id, sum(amount) AS balance FROM plan_entry GROUP BY account_id) s
           ON s.account_id = a2.id
    LEFT JOIN (SELECT account_id, sum(amount) AS held FROM holds WHERE status = 'held' GROUP BY account_id) h
           ON h.account_id = a2.id
    WHERE a.id = a2.id AND a2.balance_tracked AND (s.balance IS NOT NULL OR h.held IS NOT NULL)
    """,
    """
    UPDATE recharge_batches rb SET result = jsonb_build_object(
        'batch_id', rb.id, 'mode', rb.mode, 'dry_run', false, 'rows', rb.row_count, 'applied', rb.applied_count,
        'total_amount', rb.total_amount, 'failed', '[]'::jsonb, 'transaction_id', t.id)
    FROM ledger_transactions t WHERE t.batch_id = rb.id AND rb.result = '{}'
    """,
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
    # Later price versions (a new operation's price book) for the prices screen.
    """
    INSERT INTO prices (operation, version, tokens_per_unit, actor, note, created_at)
    VALUES ('swap.video', 1, 12, 'user:' || :platform_admin, 'video launch', CAST(:start AS timestamptz)),
           ('swap.video', 2, 10, 'user:' || :platform_admin, 'volume discount',
            CAST(:start AS timestamptz) + interval '30 days')
    """,
]

_BIG_TABLES = (
    "ledger_entries",
    "ledger_transactions",
    "ledger_accounts",
    "holds",
    "users",
    "api_keys",
    "jobs",
    "audit_events",
    "webhook_events",
    "webhook_deliveries",
    "recharge_batches",
    "tenants",
)


def periodic_batches(scale: Scale, sizes: list[int], tenant_ids: list[int]) -> dict[str, list[Any]]:
    rng = random.Random(11)
    chosen = rng.choices(range(scale.tenants), weights=sizes, k=scale.periodic_batches)
    reasons = ["monthly allowance", "campaign credit", "team top-up", "quarterly bonus"]
    return {
        "b_tenants": [tenant_ids[i] for i in chosen],
        "b_days": [3 + rng.random() * (scale.days - 3.5) for _ in chosen],
        "b_rows": [max(1, min(sizes[i] - 1, int(rng.expovariate(1 / 500)))) for i in chosen],
        "b_reasons": [rng.choice(reasons) for _ in chosen],
    }


def seed(session: Session, settings: Settings, scale: Scale) -> Seeded:
    seeded = Seeded()
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seeded.seconds[name] = round(now - clock, 2)
        print(f"  seed: {name} in {now - clock:.1f} s", flush=True)
        clock = now

    session.execute(text("SELECT setseed(0.42)"))
    tenant_ids = _people(session, settings, scale, seeded)
    lap("tenants and staff (services)")
    sizes = tenant_sizes(scale)
    now = session.execute(text("SELECT date_trunc('minute', now())")).scalar_one()
    start: datetime = now - timedelta(days=scale.days)
    system: dict[str, int] = dict(
        session.execute(text("SELECT kind, id FROM ledger_accounts WHERE NOT balance_tracked")).all()
    )
    params: dict[str, object] = {
        "tenants": tenant_ids,
        "n_tenants": scale.tenants,
        "sizes": sizes,
        "start": start,
        "days": scale.days,
        "n_users": sum(sizes),
        "issuance": system["issuance"],
        "revenue": system["usage_revenue"],
        "platform_admin": seeded.staff_ids["platform_admin"],
        "admin_scopes": sorted(s.value for s in ROLE_SCOPES[Role.tenant_admin]),
        "member_scopes": sorted(s.value for s in ROLE_SCOPES[Role.member]),
        "salt": "console",
        "jobs": scale.jobs,
        "queued": max(1, scale.jobs // 160),
        "running": max(1, scale.jobs // 500),
    }
    batches = periodic_batches(scale, sizes, tenant_ids)
    params.update(batches)
    for statement in _USERS_SQL:
        session.execute(text(statement), params)
    lap(f"{sum(sizes):,} users, accounts and keys")
    # Entries budget: topups and batches are what they are; the rest is split 1 : 4 singles : captures (2 each).
    batch_rows = sum(sizes) + sum(batches["b_rows"])
    fixed = 2 * (scale.tenants + scale.tenants // 2 * 2) + batch_rows + scale.tenants + scale.periodic_batches
    job_captures = int(scale.jobs * 0.87)
    pairs = max(0, (scale.entries - fixed) // 2 - job_captures)
    params["singles"] = pairs // 5
    params["captures"] = pairs - pairs // 5
    session.execute(text(_JOBS_PLAN_SQL), params)
    for statement in _PLAN_SQL:
        session.execute(text(statement), params)
    session.execute(text(_JOB_CAPTURES_SQL), params)
    for statement in _NUMBER_SQL:
        session.execute(text(statement), params)
    total = int(session.execute(text("SELECT max(n) FROM plan_tx")).scalar_one())
    lap(f"plan of {total:,} transactions, their holds and batches")
    step = 100_000
    for first in range(1, total + 1, step):
        session.execute(text(_ENTRIES_SQL), {"first": first, "last": first + step - 1})
    lap("ledger entries")
    for statement in _AFTER_LEDGER_SQL:
        session.execute(text(statement), params)
    session.commit()
    lap("balances, jobs, webhooks, audit trail")
    _collect(session, seeded, tenant_ids[0])
    return seeded


def finish(engine: Engine, session: Session, seeded: Seeded) -> None:
    """What a running platform has done by now: the books sealed (the periodic sealer's work, which also fills the
    journal's rollup where the sealer keeps one), then every table vacuumed and analysed (autovacuum's)."""
    begun = time.perf_counter()
    while sealing.seal_all(session, max_rows=50_000, max_batches=100):
        session.commit()
    session.commit()
    seeded.seconds["sealing"] = round(time.perf_counter() - begun, 2)
    begun = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        for table in tables:
            conn.exec_driver_sql(f'VACUUM (ANALYZE) "{table}"')
    seeded.seconds["vacuum analyze"] = round(time.perf_counter() - begun, 2)
    print(f"  seed: sealing {seeded.seconds['sealing']} s, vacuum analyze {seeded.seconds['vacuum analyze']} s")


def _collect(session: Session, seeded: Seeded, tenant_id: int) -> None:
    def one(sql: str) -> object:
        return session.execute(text(sql), {"t": tenant_id}).scalar()

    seeded.ids = {
        "tenant": tenant_id,
        "user": one("SELECT max(id) FROM users WHERE tenant_id = :t AND role = 'member' AND status = 'active'"),
        "key": one("SELECT max(id) FROM api_keys WHERE tenant_id = :t"),
        "batch": one("SELECT max(id) FROM recharge_batches WHERE tenant_id = :t AND row_count > 20"),
        "job": one("SELECT public_id FROM jobs WHERE tenant_id = :t AND status = 'succeeded' ORDER BY id DESC LIMIT 1"),
        "job_numeric": one("SELECT max(id) FROM jobs WHERE tenant_id = :t AND status = 'succeeded'"),
        "transaction": one("SELECT max(id) FROM ledger_transactions WHERE tenant_id = :t AND kind = 'recharge'"),
        "event": one("SELECT max(id) FROM audit_events WHERE tenant_id = :t"),
        "webhook": one("SELECT public_id FROM webhook_events WHERE tenant_id = :t ORDER BY id DESC LIMIT 1"),
        "hold": one("SELECT max(id) FROM holds WHERE tenant_id = :t"),
        "account": one(
            "SELECT account_id FROM users WHERE tenant_id = :t AND role = 'member' ORDER BY id DESC LIMIT 1"
        ),
        "user_email": one(
            "SELECT email FROM users WHERE tenant_id = :t AND role = 'member' AND status = 'active' "
            "ORDER BY id DESC LIMIT 1"
        ),
    }
    for table in (*_BIG_TABLES, "recharge_approvals"):
        seeded.counts[table] = int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
