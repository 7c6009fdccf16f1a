"""The console benchmark's ledger (bench/console_seed.py runs these steps, in this order, inside its seed): every
ledger transaction planned in time order first (pool purchases, funding and periodic batches, single recharges,
captures of earlier usage and of the jobs), then written set-based with their batches, holds and entries, each
balance_after chaining; afterwards the accounts follow their journal and open holds, and each batch's stored result
names its transaction. Needs the temp tables of bench/console_seed_platform.py (su, st, sj)."""

from __future__ import annotations

import common
from sqlalchemy import text
from sqlalchemy.orm import Session

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

_SETTLE_SQL = [
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
]


def plan_transactions(session: Session, params: dict[str, object]) -> int:
    """Every ledger transaction, its batch, hold and entries, written (all but the entries); returns how many
    transactions there are."""
    for statement in _PLAN_SQL:
        session.execute(text(statement), params)
    session.execute(text(_JOB_CAPTURES_SQL), params)
    for statement in _NUMBER_SQL:
        session.execute(text(statement), params)
    return int(session.execute(text("SELECT max(n) FROM plan_tx")).scalar_one())


def write_entries(session: Session, total: int) -> None:
    """The planned entries of transactions 1..`total`, written in chunks."""
    step = 100_000
    for first in range(1, total + 1, step):
        session.execute(text(_ENTRIES_SQL), {"first": first, "last": first + step - 1})


def settle(session: Session, params: dict[str, object]) -> None:
    """The accounts' balances and held amounts synced with the journal, the batches' results completed, and the
    balances made credit lots (as migration 0010 did to the books it found)."""
    for statement in _SETTLE_SQL:
        session.execute(text(statement), params)
    common.lots_as_migrated(session)
