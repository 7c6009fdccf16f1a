"""The four finance logs (recharges, usage, ledger, audit), each one SQL definition (`LogSpec`): its columns, its
FROM clause and how each filter narrows it. `facemint.finance.service` turns a definition and resolved filters into
the paginated JSON pages, and `facemint.finance.exports` into the streamed CSV/JSONL exports and their totals, so a
page and an export of the same filters always agree.

Definitions hold fixed SQL fragments only; every value travels as a bound parameter (psycopg2's pyformat style,
`%(name)s`, because the exports hand the statement to COPY through `cursor.mogrify`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from facemint import tenancy

ColumnType = Literal["int", "text", "ts", "json"]

# Audit before/after never carry key material (keys store scopes, webhooks a fingerprint), but any field whose
# name looks like a secret is dropped anyway, at the top level and one level down.
SENSITIVE_KEY_PATTERN = r"secret|hash|sha[0-9]*|passw|pepper|private|credential|token_value|(^|_)key$"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql: str
    type: ColumnType = "int"


@dataclass(frozen=True, slots=True)
class LogSpec:
    name: str
    description: str
    columns: tuple[Column, ...]
    source: str
    id_sql: str
    time_sql: str
    tenant_sql: str
    # filter name -> condition; a filter missing here is refused for this log (422).
    conditions: dict[str, str]
    kinds: tuple[str, ...] = ()
    base_where: tuple[str, ...] = ()
    # trailer name -> aggregate over the projected columns (alias `s`), besides the row count.
    totals: tuple[tuple[str, str], ...] = ()
    supported: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "supported", frozenset(self.conditions))


def _strip_sensitive(column: str) -> str:
    inner = (
        "(SELECT coalesce(jsonb_object_agg(k2, v2), '{}'::jsonb) FROM jsonb_each(v) AS x2(k2, v2) "
        "WHERE k2 !~* '" + SENSITIVE_KEY_PATTERN + "')"
    )
    return (
        f"CASE WHEN jsonb_typeof({column}) = 'object' THEN ("
        f"SELECT coalesce(jsonb_object_agg(k, CASE WHEN jsonb_typeof(v) = 'object' THEN {inner} ELSE v END), "
        f"'{{}}'::jsonb) FROM jsonb_each({column}) AS x(k, v) WHERE k !~* '{SENSITIVE_KEY_PATTERN}') "
        f"ELSE {column} END"
    )


# --- ledger entries: shared by the recharges and the ledger logs ---------------------------------------------

_ENTRY_SOURCE = (
    "ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id "
    "JOIN ledger_accounts a ON a.id = e.account_id LEFT JOIN users u ON u.account_id = e.account_id "
    # Two equality joins, not one OR: an OR condition rules out a hash join (a nested loop per exported row).
    "LEFT JOIN recharge_approvals ra ON ra.transaction_id = t.id "
    "LEFT JOIN recharge_approvals rb ON rb.batch_id = t.batch_id"
)

_ENTRY_ACCOUNT_COLUMNS = (
    Column("account_id", "e.account_id"),
    Column(
        "account_kind",
        "CASE WHEN a.balance_tracked THEN CASE a.kind WHEN 'tenant_pool' THEN 'pool' ELSE 'user' END ELSE 'system' END",
        "text",
    ),
    Column("tenant_id", "a.tenant_id"),
    Column("user_id", "u.id"),
    Column("amount", "e.amount"),
    Column("balance_after", "e.balance_after"),
)

_ENTRY_TRAIL_COLUMNS = (
    Column("actor", "t.actor", "text"),
    Column("reason", "t.reason", "text"),
    Column("reference", "coalesce(e.reference, t.reference)", "text"),
    # Four-eyes: the approval this recharge was applied from, and who approved it (None: applied directly).
    Column("approval_id", "coalesce(ra.id, rb.id)"),
    Column("approved_by_user_id", "coalesce(ra.decided_by_user_id, rb.decided_by_user_id)"),
    Column("created_at", "e.created_at", "ts"),
)

_ENTRY_CONDITIONS = {
    "user_id": "e.account_id = %(user_account_id)s",
    "batch_id": "t.batch_id = %(batch_id)s",
    "operator": "t.actor = %(operator)s",
}

RECHARGES = LogSpec(
    name="recharges",
    description="one row per credited entry of a recharge transaction (single recharges and batch rows)",
    columns=(
        Column("entry_id", "e.id"),
        Column("transaction_id", "t.id"),
        Column("batch_id", "t.batch_id"),
        Column("row_no", "e.row_no"),
        *_ENTRY_ACCOUNT_COLUMNS,
        *_ENTRY_TRAIL_COLUMNS,
    ),
    source=_ENTRY_SOURCE,
    base_where=("t.kind = 'recharge'", "e.amount > 0"),
    id_sql="e.id",
    time_sql="e.created_at",
    tenant_sql="a.tenant_id",
    kinds=("single", "batch"),
    # A batch's credits are exactly the entries with a row number (billing.recharge stages every row with one;
    # single postings never set it). Tested on the entry, the planner walks the entries newest first instead of
    # reading every batch transaction's entries (it takes a batch for 5 entries; they hold hundreds). The CASE
    # folds away: the kind is a literal by then.
    conditions={
        **_ENTRY_CONDITIONS,
        "kind": "CASE WHEN %(kind)s = 'single' THEN e.row_no IS NULL ELSE e.row_no IS NOT NULL END",
    },
    totals=(("amount", "sum(s.amount)"),),
)

# Which credit lots an entry on a user or pool account touched: a credit, the lots it wrote (their tokens); a debit,
# the lots it burned (negative tokens); each with its priority and expiry. Two index ranges per entry, of that
# transaction and account only (lots by `ix_credit_lots_transaction_account`, consumptions by their key), so a batch
# of 100,000 rows costs each of its entries no more than a single recharge's; NULL on system accounts.
_ENTRY_LOTS = """CASE WHEN a.balance_tracked THEN (
    SELECT jsonb_agg(jsonb_build_object('lot_id', x.lot_id, 'tokens', x.tokens, 'priority', x.priority,
                                        'expires_at', x.expires_at) ORDER BY x.lot_id)
    FROM (
        SELECT l.id AS lot_id, l.amount AS tokens, l.priority, l.expires_at FROM credit_lots l
        WHERE e.amount > 0 AND l.transaction_id = e.transaction_id AND l.account_id = e.account_id
        UNION ALL
        SELECT l.id, -c.amount, l.priority, l.expires_at
        FROM lot_consumptions c JOIN credit_lots l ON l.id = c.lot_id
        WHERE e.amount < 0 AND c.transaction_id = e.transaction_id AND c.account_id = e.account_id
    ) x
) END"""

LEDGER = LogSpec(
    name="ledger",
    description="every ledger entry with the account's balance after it, and the credit lots it wrote or burned",
    columns=(
        Column("entry_id", "e.id"),
        Column("transaction_id", "t.id"),
        Column("kind", "t.kind", "text"),
        *_ENTRY_ACCOUNT_COLUMNS,
        Column("batch_id", "t.batch_id"),
        Column("row_no", "e.row_no"),
        Column("hold_id", "t.hold_id"),
        Column("reverses_transaction_id", "t.reverses_transaction_id"),
        *_ENTRY_TRAIL_COLUMNS,
        Column("lots", _ENTRY_LOTS, "json"),
    ),
    source=_ENTRY_SOURCE,
    id_sql="e.id",
    time_sql="e.created_at",
    tenant_sql="a.tenant_id",
    kinds=("recharge", "capture", "adjustment", "reversal", "expiry"),
    conditions={**_ENTRY_CONDITIONS, "kind": "t.kind = %(kind)s", "job_id": "t.hold_id = %(job_hold_id)s"},
    totals=(
        ("amount", "sum(s.amount)"),
        ("tracked_amount", "sum(s.amount) FILTER (WHERE s.account_kind <> 'system')"),
    ),
)

# --- jobs and audit events -------------------------------------------------------------------------------------

USAGE = LogSpec(
    name="usage",
    description="one row per job: its hold, what was captured and what was released",
    columns=(
        Column("id", "j.id"),
        Column("job_id", "j.public_id", "text"),
        Column("tenant_id", "j.tenant_id"),
        Column("user_id", "j.user_id"),
        Column("api_key_id", "j.api_key_id"),
        Column("operation", "j.operation", "text"),
        Column("job_status", "j.status", "text"),
        Column("hold_id", "h.id"),
        Column("hold_status", "h.status", "text"),
        Column("held", "h.amount"),
        Column("captured", "coalesce(h.captured_amount, 0)"),
        Column("released", "CASE WHEN h.status = 'held' THEN 0 ELSE h.amount - coalesce(h.captured_amount, 0) END"),
        Column("capture_transaction_id", "ct.id"),
        Column("price_version", "j.price_version"),
        Column("tokens_per_unit", "j.tokens_per_unit"),
        Column("units", "j.units"),
        Column("created_at", "j.created_at", "ts"),
        Column("finished_at", "j.finished_at", "ts"),
    ),
    source=(
        "jobs j JOIN holds h ON h.id = j.hold_id "
        "LEFT JOIN ledger_transactions ct ON ct.hold_id = h.id AND ct.kind = 'capture'"
    ),
    id_sql="j.id",
    time_sql="j.created_at",
    tenant_sql="j.tenant_id",
    kinds=("held", "captured", "released", "expired"),
    conditions={
        "user_id": "j.user_id = %(user_id)s",
        "kind": "h.status = %(kind)s",
        "operator": "(j.user_id = %(operator_user)s OR j.api_key_id = %(operator_key)s)",
        "job_id": "j.id = %(job_id)s",
    },
    totals=(("held", "sum(s.held)"), ("captured", "sum(s.captured)"), ("released", "sum(s.released)")),
)

AUDIT = LogSpec(
    name="audit",
    description="admin audit events (fields named like a secret, hash or password are never shown)",
    columns=(
        Column("id", "ev.id"),
        Column("occurred_at", "ev.occurred_at", "ts"),
        Column("tenant_id", "ev.tenant_id"),
        Column("actor_user_id", "ev.actor_user_id"),
        Column("actor_api_key_id", "ev.actor_api_key_id"),
        Column("action", "ev.action", "text"),
        Column("target_type", "ev.target_type", "text"),
        Column("target_id", "ev.target_id", "text"),
        Column("request_id", "ev.request_id", "text"),
        Column("ip", "host(ev.ip)", "text"),
        Column("before", _strip_sensitive("ev.before"), "json"),
        # A tenant-scoped reader (`%(reader_scope)s`, bound by every query of a log) never sees who a batch's
        # failed rows named outside its tenant (decisions recorded before they kept counts only).
        Column(
            "after",
            tenancy.redacted_audit_after_sql(_strip_sensitive("ev.after"), scope_sql="%(reader_scope)s"),
            "json",
        ),
    ),
    source="audit_events ev",
    id_sql="ev.id",
    time_sql="ev.occurred_at",
    tenant_sql="ev.tenant_id",
    conditions={
        "user_id": "(ev.actor_user_id = %(user_id)s OR (ev.target_type = 'user' AND ev.target_id = %(user_text)s))",
        "kind": "ev.action = %(kind)s",
        "batch_id": "(ev.target_type = 'recharge_batch' AND ev.target_id = %(batch_text)s)",
        "operator": "(ev.actor_user_id = %(operator_user)s OR ev.actor_api_key_id = %(operator_key)s)",
        "job_id": "(ev.target_type = 'job' AND ev.target_id IN (%(job_text)s, %(job_public)s))",
    },
)

LOGS: dict[str, LogSpec] = {spec.name: spec for spec in (RECHARGES, USAGE, LEDGER, AUDIT)}
