"""The journal's rollup (`ledger_rollups`): the sealed ledger entries summed per time bucket, tenant, account kind
and transaction kind, so that reports over days and tenants need not read a million entries.

Written only by the sealer (billing.sealing.service), in the statement that seals a batch of ledger entries: the
batch's rows are aggregated and added to the rollup (an upsert), so at every commit the rollup is exactly the sum
of the sealed prefix of the journal, i.e. of the entries at or before the stream's seal head in (xid, id) order.
The money path never touches it.

Three sets of rows (`span`, `tenant_id`), each the whole sealed journal summed another way:
- ('15 minutes', tenant): per 15-minute UTC bucket `date_bin('15 minutes', created_at, 'epoch')` and tenant (0 for
  accounts without one). Every zone's offset is a whole number of quarter hours (India's +05:30 and Nepal's
  +05:45 included), so a local day, in any zone and across a DST change, is a run of whole buckets: one tenant's
  days in the viewer's zone;
- ('15 minutes', EVERY_TENANT): the same buckets summed over every account: every tenant's days in a zone, without
  reading each tenant's rows;
- ('1 day', tenant): per UTC day and tenant: the finance daily report, and the whole days of longer windows.

Readers take `movements()` (or `unsealed()`): the rollup plus the tail, the entries after the seal head (found by
the (xid, id) index; few when the periodic sealer keeps up), in one statement and so one snapshot: a seal and its
rollup rows commit together, so every snapshot sees both or neither. `up_to()` is the journal up to an instant
(the liability at a past instant): whole buckets before it, the sealed entries of its own bucket, and the tail.
Reconciliation checks the rollup against the journal (`RECONCILE_SQL`). An entry's created_at is its transaction's
(both are the writing transaction's now()), so a bucket also holds the transactions created in it, and `up_to`
finds the entries of a bucket through their transactions' time index."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.ledger.orm import AccountKind

ParamStyle = Literal["named", "pyformat"]

QUARTER = "15 minutes"
DAY = "1 day"
# tenant_id of the QUARTER rows that sum every account (tenant or not); 0 is "no tenant".
EVERY_TENANT = -1
STREAM = "ledger_entries"
# The accounts whose balances are owed to customers (balance_tracked), by kind: what the reports sum.
TRACKED_KINDS_SQL = f"('{AccountKind.user.value}', '{AccountKind.tenant_pool.value}')"


def bucket_of(span: str, column: str) -> str:
    return f"date_bin('{span}', {column}, TIMESTAMPTZ 'epoch')"


# The ledger stream's seal head, (0, 0) before the first seal; each a scalar subquery on (stream, seq)'s index.
_HEAD_XID = (
    f"coalesce((SELECT s.xid_to FROM ledger_seals s WHERE s.stream = '{STREAM}' ORDER BY s.seq DESC LIMIT 1),"
    " CAST('0' AS xid8))"
)
_HEAD_ID = (
    f"coalesce((SELECT s.last_id FROM ledger_seals s WHERE s.stream = '{STREAM}' ORDER BY s.seq DESC LIMIT 1), 0)"
)
SEALED = f"(e.xid, e.id) <= ({_HEAD_XID}, {_HEAD_ID})"
UNSEALED = f"(e.xid, e.id) > ({_HEAD_XID}, {_HEAD_ID})"
_HEAD_SQL = text(
    f"SELECT xid_to::text AS xid, last_id AS id FROM ledger_seals WHERE stream = '{STREAM}' ORDER BY seq DESC LIMIT 1"
)
# Bound parameters a reader passes with `movements`/`unsealed` (from `head_hint`), in its driver's style.
HINT_PARAMS = {
    "named": ("CAST(:rollup_head_xid AS xid8)", ":rollup_head_id"),
    "pyformat": ("CAST(%(rollup_head_xid)s AS xid8)", "%(rollup_head_id)s"),
}


def head_hint(session: Session) -> dict[str, object]:
    """The seal head now, as bound parameters for `movements`/`unsealed`. The planner cannot see a head read
    inside the statement (and would scan the whole journal for the tail); with the head as a literal it uses the
    (xid, id) index. The statement still cuts the tail at the head of its own snapshot, which can only be the same
    or later (seals are append-only), so the hint narrows the scan without changing the answer."""
    row = session.execute(_HEAD_SQL).one_or_none()
    return {"rollup_head_xid": row.xid if row else "0", "rollup_head_id": row.id if row else 0}


_JOINED = """
FROM {entries} e
JOIN ledger_accounts a ON a.id = e.account_id
JOIN ledger_transactions t ON t.id = e.transaction_id
"""


def _rolled_up(entries: str, where: str = "") -> str:
    """The rollup rows of the entries `entries` (a relation with BATCH_COLUMNS): all three sets, in one pass."""
    return f"""
    SELECT CASE WHEN grouping(k.day) = 0 THEN '{DAY}' ELSE '{QUARTER}' END AS span,
           coalesce(k.day, k.quarter) AS bucket,
           CASE WHEN grouping(k.tenant_id) = 1 THEN {EVERY_TENANT} ELSE k.tenant_id END AS tenant_id,
           k.account_kind, k.transaction_kind, sum(k.amount) AS amount, count(*) AS entries
    FROM (
        SELECT {bucket_of(QUARTER, "e.created_at")} AS quarter, {bucket_of(DAY, "e.created_at")} AS day,
               coalesce(a.tenant_id, 0) AS tenant_id, a.kind AS account_kind, t.kind AS transaction_kind, e.amount
        {_JOINED.format(entries=entries)}
        {where}
    ) k
    GROUP BY GROUPING SETS (
        (k.quarter, k.tenant_id, k.account_kind, k.transaction_kind),
        (k.quarter, k.account_kind, k.transaction_kind),
        (k.day, k.tenant_id, k.account_kind, k.transaction_kind)
    )
    """


# The columns of a sealed batch the upsert needs (the sealer carries them in its batch).
BATCH_COLUMNS = ("created_at", "account_id", "transaction_id", "amount")


def upsert_sql(batch: str) -> str:
    """A data-modifying statement (for a CTE of the sealing statement) adding the rows of `batch` (a relation with
    BATCH_COLUMNS) to the rollup. One sealer at a time (the sealers' lock), so the upsert never races another."""
    return f"""
    INSERT INTO ledger_rollups AS r (span, tenant_id, bucket, account_kind, transaction_kind, amount, entries)
    SELECT k.span, k.tenant_id, k.bucket, k.account_kind, k.transaction_kind, k.amount, k.entries
    FROM ({_rolled_up(batch)}) k
    ON CONFLICT (span, tenant_id, bucket, account_kind, transaction_kind)
    DO UPDATE SET amount = r.amount + excluded.amount, entries = r.entries + excluded.entries
    """


def unsealed(span: str, *, every_tenant: bool = False, style: ParamStyle = "named") -> str:
    """A subquery of the unsealed entries as rollup rows of `span` (bucket, tenant_id, account_kind,
    transaction_kind, amount, entries), one per entry; `every_tenant`: as the EVERY_TENANT rows. Its parameters
    are `head_hint`'s, written in the driver's `style`."""
    tenant = str(EVERY_TENANT) if every_tenant else "coalesce(a.tenant_id, 0)"
    hint_xid, hint_id = HINT_PARAMS[style]
    return f"""(
    SELECT {bucket_of(span, "e.created_at")} AS bucket, CAST({tenant} AS bigint) AS tenant_id,
           a.kind AS account_kind, t.kind AS transaction_kind, e.amount, CAST(1 AS bigint) AS entries
    {_JOINED.format(entries="ledger_entries")}
    WHERE (e.xid, e.id) > ({hint_xid}, {hint_id}) AND {UNSEALED}
    )"""


def movements(span: str, *, every_tenant: bool = False, style: ParamStyle = "named") -> str:
    """A subquery of the whole journal as rows of `span` (bucket, tenant_id, account_kind, transaction_kind,
    amount, entries): the rollup's, and one per unsealed entry. Filter and group it like the entries themselves
    (conditions on its columns reach both halves, and the rollup's primary key serves tenant_id and bucket);
    sums over it equal sums over the entries, in one statement's snapshot. Its parameters are `head_hint`'s."""
    tenants = f"r.tenant_id = {EVERY_TENANT}" if every_tenant else "r.tenant_id >= 0"
    return f"""(
    SELECT r.bucket, r.tenant_id, r.account_kind, r.transaction_kind, r.amount, r.entries FROM ledger_rollups r
    WHERE r.span = '{span}' AND {tenants}
    UNION ALL
    SELECT * FROM {unsealed(span, every_tenant=every_tenant, style=style)} u
    )"""


def instant_bounds(at: datetime) -> dict[str, object]:
    """`up_to`'s bound parameters for the instant `at`: the instant in UTC, the start of its UTC day and of its
    15-minute bucket (date_bin's, on the epoch)."""
    at = at.astimezone(UTC)
    quarter = at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)
    return {"rollup_at": at, "rollup_day": quarter.replace(hour=0, minute=0), "rollup_quarter": quarter}


def up_to(*, style: ParamStyle = "named") -> str:
    """A subquery of the journal's entries made at or before an instant, as rows (tenant_id, account_kind,
    transaction_kind, amount, entries): the daily rollup rows of the whole UTC days before it, the 15-minute rows
    of its day's whole buckets before it, the sealed entries of its own bucket up to it (found by their
    transactions' time, which is theirs), and the unsealed entries made by then. Sums over it equal sums over the
    entries with created_at <= the instant, in one statement's snapshot; however far back the instant, it reads
    at most a day of quarters and one quarter of entries besides the daily rows and the tail. Its parameters are
    `instant_bounds`' and `head_hint`'s, in the driver's `style`."""
    at, day, quarter = (_param(name, style) for name in ("rollup_at", "rollup_day", "rollup_quarter"))
    hint_xid, hint_id = HINT_PARAMS[style]
    return f"""(
    SELECT r.tenant_id, r.account_kind, r.transaction_kind, r.amount, r.entries FROM ledger_rollups r
    WHERE r.span = '{DAY}' AND r.tenant_id >= 0 AND r.bucket < {day}
    UNION ALL
    SELECT r.tenant_id, r.account_kind, r.transaction_kind, r.amount, r.entries FROM ledger_rollups r
    WHERE r.span = '{QUARTER}' AND r.tenant_id >= 0 AND r.bucket >= {day} AND r.bucket < {quarter}
    UNION ALL
    SELECT coalesce(a.tenant_id, 0), a.kind, t.kind, e.amount, CAST(1 AS bigint)
    {_JOINED.format(entries="ledger_entries")}
    WHERE t.created_at >= {quarter} AND t.created_at <= {at} AND e.created_at >= {quarter} AND e.created_at <= {at}
      AND {SEALED}
    UNION ALL
    SELECT coalesce(a.tenant_id, 0), a.kind, t.kind, e.amount, CAST(1 AS bigint)
    {_JOINED.format(entries="ledger_entries")}
    WHERE (e.xid, e.id) > ({hint_xid}, {hint_id}) AND {UNSEALED} AND e.created_at <= {at}
    )"""


def _param(name: str, style: ParamStyle) -> str:
    return f":{name}" if style == "named" else f"%({name})s"


# The rollup against the sealed entries recomputed, key by key: each row that differs (or exists on one side).
RECONCILE_SQL = f"""
SELECT concat_ws(' ', coalesce(r.span, j.span),
                 to_char(coalesce(r.bucket, j.bucket) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'),
                 coalesce(r.tenant_id, j.tenant_id), coalesce(r.account_kind, j.account_kind),
                 coalesce(r.transaction_kind, j.transaction_kind)) AS id,
       format('rollup %s in %s entries, journal %s in %s', coalesce(r.amount, 0), coalesce(r.entries, 0),
              coalesce(j.amount, 0), coalesce(j.entries, 0)) AS detail
FROM ledger_rollups r
FULL JOIN ({_rolled_up("ledger_entries", f"WHERE {SEALED}")}) j
       USING (span, tenant_id, bucket, account_kind, transaction_kind)
WHERE r.amount IS DISTINCT FROM j.amount OR r.entries IS DISTINCT FROM j.entries
"""
