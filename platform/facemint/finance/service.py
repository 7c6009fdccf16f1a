"""The finance views: four logs (recharges, usage, ledger, audit) and two reports (daily movements, liability).

Each log is one SQL definition (`LogSpec`): its columns, its FROM clause and how each filter narrows it. The same
definition serves the paginated JSON pages (`list_rows`), and the streamed CSV/JSONL exports and their totals
(`facemint.finance.exports`), so a page and an export of the same filters always agree.

SQL is assembled here from fixed fragments only; every value travels as a bound parameter (psycopg2's pyformat
style, `%(name)s`, because the exports hand the statement to COPY through `cursor.mogrify`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from facemint.finance.errors import FilterTargetNotFound, InvalidFilter

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
class Filters:
    """Resolved filters (see `resolve_filters`): ids already checked against the caller's tenant."""

    tenant_scope: int | None = None  # the caller's tenant (None: staff, every tenant)
    tenant_id: int | None = None
    user_id: int | None = None
    user_account_id: int | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive
    kind: str | None = None
    batch_id: int | None = None
    operator: str | None = None
    job_id: int | None = None
    job_public_id: str | None = None
    job_hold_id: int | None = None


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
    operator_help: str = ""
    supported: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "supported", frozenset(self.conditions))


def _ts(column: str) -> str:
    """UTC ISO 8601 with a Z (exports run with TimeZone UTC; this pins it anyway)."""
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


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


_ACCOUNT_KIND = (
    "CASE WHEN a.balance_tracked THEN CASE a.kind WHEN 'tenant_pool' THEN 'pool' ELSE 'user' END ELSE 'system' END"
)

RECHARGES = LogSpec(
    name="recharges",
    description="one row per credited entry of a recharge transaction (single recharges and batch rows)",
    columns=(
        Column("entry_id", "e.id"),
        Column("transaction_id", "t.id"),
        Column("batch_id", "t.batch_id"),
        Column("row_no", "e.row_no"),
        Column("account_id", "e.account_id"),
        Column("account_kind", _ACCOUNT_KIND, "text"),
        Column("tenant_id", "a.tenant_id"),
        Column("user_id", "u.id"),
        Column("amount", "e.amount"),
        Column("balance_after", "e.balance_after"),
        Column("actor", "t.actor", "text"),
        Column("reason", "t.reason", "text"),
        Column("reference", "coalesce(e.reference, t.reference)", "text"),
        # Four-eyes: the approval this recharge was applied from, and who approved it (None: applied directly).
        Column("approval_id", "coalesce(ra.id, rb.id)"),
        Column("approved_by_user_id", "coalesce(ra.decided_by_user_id, rb.decided_by_user_id)"),
        Column("created_at", "e.created_at", "ts"),
    ),
    source=(
        "ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id "
        "JOIN ledger_accounts a ON a.id = e.account_id LEFT JOIN users u ON u.account_id = e.account_id "
        # Two equality joins (not one OR): they plan as hash joins over the small approvals table.
        "LEFT JOIN recharge_approvals ra ON ra.transaction_id = t.id "
        "LEFT JOIN recharge_approvals rb ON rb.batch_id = t.batch_id"
    ),
    base_where=("t.kind = 'recharge'", "e.amount > 0"),
    id_sql="e.id",
    time_sql="e.created_at",
    tenant_sql="a.tenant_id",
    kinds=("single", "batch"),
    conditions={
        "user_id": "e.account_id = %(user_account_id)s",
        "kind": "(t.batch_id IS NULL) = (%(kind)s = 'single')",
        "batch_id": "t.batch_id = %(batch_id)s",
        "operator": "t.actor = %(operator)s",
    },
    totals=(("amount", "sum(s.amount)"),),
    operator_help="the actor label recorded on the transaction, e.g. `user:12` or `key:3`",
)

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
    operator_help="the requesting principal: `user:ID` or `key:ID`",
)

LEDGER = LogSpec(
    name="ledger",
    description="every ledger entry with the account's balance after it",
    columns=(
        Column("entry_id", "e.id"),
        Column("transaction_id", "t.id"),
        Column("kind", "t.kind", "text"),
        Column("account_id", "e.account_id"),
        Column("account_kind", _ACCOUNT_KIND, "text"),
        Column("tenant_id", "a.tenant_id"),
        Column("user_id", "u.id"),
        Column("amount", "e.amount"),
        Column("balance_after", "e.balance_after"),
        Column("batch_id", "t.batch_id"),
        Column("row_no", "e.row_no"),
        Column("hold_id", "t.hold_id"),
        Column("reverses_transaction_id", "t.reverses_transaction_id"),
        Column("actor", "t.actor", "text"),
        Column("reason", "t.reason", "text"),
        Column("reference", "coalesce(e.reference, t.reference)", "text"),
        # Four-eyes: the approval this recharge was applied from, and who approved it (None: applied directly).
        Column("approval_id", "coalesce(ra.id, rb.id)"),
        Column("approved_by_user_id", "coalesce(ra.decided_by_user_id, rb.decided_by_user_id)"),
        Column("created_at", "e.created_at", "ts"),
    ),
    source=(
        "ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id "
        "JOIN ledger_accounts a ON a.id = e.account_id LEFT JOIN users u ON u.account_id = e.account_id "
        # Two equality joins (not one OR): they plan as hash joins over the small approvals table.
        "LEFT JOIN recharge_approvals ra ON ra.transaction_id = t.id "
        "LEFT JOIN recharge_approvals rb ON rb.batch_id = t.batch_id"
    ),
    id_sql="e.id",
    time_sql="e.created_at",
    tenant_sql="a.tenant_id",
    kinds=("recharge", "capture", "adjustment", "reversal"),
    conditions={
        "user_id": "e.account_id = %(user_account_id)s",
        "kind": "t.kind = %(kind)s",
        "batch_id": "t.batch_id = %(batch_id)s",
        "operator": "t.actor = %(operator)s",
        "job_id": "t.hold_id = %(job_hold_id)s",
    },
    totals=(
        ("amount", "sum(s.amount)"),
        ("tracked_amount", "sum(s.amount) FILTER (WHERE s.account_kind <> 'system')"),
    ),
    operator_help="the actor label recorded on the transaction, e.g. `user:12` or `key:3`",
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
        Column("after", _strip_sensitive("ev.after"), "json"),
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
    operator_help="the acting principal: `user:ID` or `key:ID`",
)

LOGS: dict[str, LogSpec] = {spec.name: spec for spec in (RECHARGES, USAGE, LEDGER, AUDIT)}
LogName = Literal["recharges", "usage", "ledger", "audit"]

# --- filters -----------------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    """Filters are UTC: a time without an offset is taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def resolve_filters(
    session: Session,
    *,
    log: LogSpec,
    tenant_scope: int | None,
    tenant_id: int | None = None,
    user_id: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    kind: str | None = None,
    batch_id: int | None = None,
    operator: str | None = None,
    job_id: str | None = None,
) -> Filters:
    """Check the filters against the log and the caller's tenant. A user, batch or job that does not exist or
    that another tenant owns answers 404 (a tenant admin cannot probe other tenants' ids); the endpoint has
    already refused another tenant's `tenant_id` the same way."""
    given = {
        "user_id": user_id,
        "kind": kind,
        "batch_id": batch_id,
        "operator": operator,
        "job_id": job_id,
    }
    for name, value in given.items():
        if value is not None and name not in log.supported:
            raise InvalidFilter(f"the {log.name} log has no `{name}` filter", filter=name)
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and start >= end:
        raise InvalidFilter("`from` must be before `to`", filter="from")
    if kind is not None and log.kinds and kind not in log.kinds:
        raise InvalidFilter(f"kind must be one of: {', '.join(log.kinds)}", filter="kind", allowed=list(log.kinds))
    if operator is not None and "%(operator_user)s" in log.conditions.get("operator", ""):
        _parse_principal_label(operator)
    filters = Filters(tenant_scope=tenant_scope, tenant_id=tenant_id, start=start, end=end, kind=kind)
    filters = replace(filters, operator=operator)
    if user_id is not None:
        row = (
            session.connection()
            .exec_driver_sql("SELECT tenant_id, account_id FROM users WHERE id = %(id)s", {"id": user_id})
            .first()
        )
        if row is None or (tenant_scope is not None and row.tenant_id != tenant_scope):
            raise FilterTargetNotFound(f"user {user_id} not found")
        filters = replace(filters, user_id=user_id, user_account_id=row.account_id)
    if batch_id is not None:
        visible = (
            session.connection()
            .exec_driver_sql(
                """
            SELECT b.tenant_id IS NOT DISTINCT FROM %(scope)s OR %(scope)s IS NULL OR EXISTS (
                SELECT 1 FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
                JOIN ledger_accounts a ON a.id = e.account_id
                WHERE t.batch_id = b.id AND a.tenant_id = %(scope)s)
            FROM recharge_batches b WHERE b.id = %(id)s
            """,
                {"id": batch_id, "scope": tenant_scope},
            )
            .scalar()
        )
        if not visible:
            raise FilterTargetNotFound(f"recharge batch {batch_id} not found")
        filters = replace(filters, batch_id=batch_id)
    if job_id is not None:
        job = _find_job(session, job_id)
        if job is None or (tenant_scope is not None and job.tenant_id != tenant_scope):
            raise FilterTargetNotFound(f"job {job_id} not found")
        filters = replace(filters, job_id=job.id, job_public_id=job.public_id, job_hold_id=job.hold_id)
    return filters


def _find_job(session: Session, job_id: str) -> Any:
    """A job by its public id (`job_...`) or its numeric id."""
    if job_id.isdigit() and len(job_id) < 19:
        where, value = "id = %(value)s", int(job_id)
    else:
        where, value = "public_id = %(value)s", job_id  # type: ignore[assignment]
    sql = f"SELECT id, tenant_id, hold_id, public_id FROM jobs WHERE {where}"
    return session.connection().exec_driver_sql(sql, {"value": value}).first()


def _parse_principal_label(label: str) -> tuple[int | None, int | None]:
    """`user:12` -> (12, None); `key:3` -> (None, 3); a bare number is a user id."""
    kind, _, number = label.partition(":")
    if not number:
        kind, number = "user", kind
    if kind not in ("user", "key") or not number.isdigit() or len(number) > 18:
        raise InvalidFilter("operator must be `user:ID` or `key:ID`", filter="operator")
    return (int(number), None) if kind == "user" else (None, int(number))


def where_clause(log: LogSpec, filters: Filters) -> tuple[str, dict[str, Any]]:
    """The WHERE conditions (joined with AND, at least `TRUE`) and their parameters."""
    parts = list(log.base_where)
    params: dict[str, Any] = {}
    if filters.tenant_scope is not None:
        parts.append(f"{log.tenant_sql} = %(tenant_scope)s")
        params["tenant_scope"] = filters.tenant_scope
    if filters.tenant_id is not None:
        parts.append(f"{log.tenant_sql} = %(tenant_id)s")
        params["tenant_id"] = filters.tenant_id
    if filters.start is not None:
        parts.append(f"{log.time_sql} >= %(start)s")
        params["start"] = filters.start
    if filters.end is not None:
        parts.append(f"{log.time_sql} < %(end)s")
        params["end"] = filters.end
    if filters.user_id is not None:
        parts.append(log.conditions["user_id"])
        params.update(user_id=filters.user_id, user_account_id=filters.user_account_id, user_text=str(filters.user_id))
    if filters.kind is not None:
        parts.append(log.conditions["kind"])
        params["kind"] = filters.kind
    if filters.batch_id is not None:
        parts.append(log.conditions["batch_id"])
        params.update(batch_id=filters.batch_id, batch_text=str(filters.batch_id))
    if filters.operator is not None:
        parts.append(log.conditions["operator"])
        params["operator"] = filters.operator
        if "%(operator_user)s" in log.conditions["operator"]:
            user, key = _parse_principal_label(filters.operator)
            params.update(operator_user=user, operator_key=key)
    if filters.job_id is not None:
        parts.append(log.conditions["job_id"])
        params.update(job_id=filters.job_id, job_hold_id=filters.job_hold_id, job_text=str(filters.job_id))
        params["job_public"] = filters.job_public_id or ""
    return (" AND ".join(parts) or "TRUE"), params


def select_sql(
    log: LogSpec,
    filters: Filters,
    *,
    render: Literal["raw", "csv", "json"],
    ascending: bool,
    before_id: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """`SELECT <columns> FROM <log> WHERE <filters> ORDER BY id` for a page (`raw`: native values), a CSV export
    (timestamps as ISO text, text cells neutralised against formulas) or a JSON export (ISO timestamps)."""
    where, params = where_clause(log, filters)
    if before_id is not None:
        where += f" AND {log.id_sql} < %(before_id)s"
        params["before_id"] = before_id
    columns = ", ".join(f"{_render(c, render)} AS {c.name}" for c in log.columns)
    order = "ASC" if ascending else "DESC"
    return f"SELECT {columns} FROM {log.source} WHERE {where} ORDER BY {log.id_sql} {order}", params


def _render(column: Column, render: str) -> str:
    if render == "raw":
        return column.sql
    if column.type == "ts":
        return _ts(column.sql)
    if render == "csv" and column.type in ("text", "json"):
        value = column.sql if column.type == "text" else f"({column.sql})::text"
        return neutralised(value)
    return column.sql


def neutralised(value_sql: str) -> str:
    """OWASP CSV injection: a cell that starts with = + - @, a tab or a carriage return gets a leading `'`, so a
    spreadsheet shows it as text instead of running it. Applied to every text cell of a CSV export; numeric cells
    are numbers the ledger wrote (a negative amount is a number, not a formula), so they stay summable."""
    return (
        f"CASE WHEN left({value_sql}, 1) IN ('=', '+', '-', '@', chr(9), chr(13)) "
        f"THEN '''' || {value_sql} ELSE {value_sql} END"
    )


def list_rows(
    session: Session, *, log: LogSpec, filters: Filters, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """A page, newest first: `limit` rows (fetch `limit + 1` to learn whether another page exists)."""
    sql, params = select_sql(log, filters, render="raw", ascending=False, before_id=before_id)
    sql += " LIMIT %(limit)s"
    params["limit"] = limit
    result = session.connection().exec_driver_sql(sql, params)
    return [dict(row) for row in result.mappings()]


def totals_sql(log: LogSpec, filters: Filters) -> tuple[str, dict[str, Any]]:
    """Row count and the log's sums over exactly what an export of these filters contains."""
    inner, params = select_sql(log, filters, render="raw", ascending=True)
    aggregates = ", ".join(f"coalesce({expr}, 0) AS {name}" for name, expr in log.totals)
    return f"SELECT count(*) AS rows{', ' + aggregates if aggregates else ''} FROM ({inner}) AS s", params


def tracked_balance_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """The user and pool accounts' balance (the cached balance, at the export's snapshot) within the tenant/user
    filters: with no time, kind, batch, operator or job filter, it equals the export's `tracked_amount`."""
    parts, params = ["a.balance_tracked"], {}
    for name, value in (("tenant_scope", filters.tenant_scope), ("tenant_id", filters.tenant_id)):
        if value is not None:
            parts.append(f"a.tenant_id = %({name})s")
            params[name] = value
    if filters.user_account_id is not None:
        parts.append("a.id = %(user_account_id)s")
        params["user_account_id"] = filters.user_account_id
    return f"SELECT coalesce(sum(a.balance), 0) FROM ledger_accounts a WHERE {' AND '.join(parts)}", params


# --- reports -----------------------------------------------------------------------------------------------

MAX_REPORT_DAYS = 366


@dataclass(frozen=True, slots=True)
class DailyRow:
    tenant_id: int | None
    day: date
    opening: int
    recharged: int
    consumed: int
    released: int
    adjustments: int
    closing: int


def default_days(first: date | None, last: date | None) -> tuple[date, date]:
    last = last or datetime.now(UTC).date()
    first = first or last - timedelta(days=29)
    if first > last:
        raise InvalidFilter("`from` must not be after `to`", filter="from")
    if (last - first).days + 1 > MAX_REPORT_DAYS:
        raise InvalidFilter(f"at most {MAX_REPORT_DAYS} days per report", filter="to")
    return first, last


_DAILY_SQL = """
WITH acct AS (
    SELECT id, coalesce(tenant_id, 0) AS tenant_id FROM ledger_accounts a WHERE a.balance_tracked {scope}
),
opening AS (
    SELECT a.tenant_id, sum(e.amount) AS amount
    FROM ledger_entries e JOIN acct a ON a.id = e.account_id
    WHERE e.created_at < %(start)s GROUP BY a.tenant_id
),
moves AS (
    SELECT a.tenant_id, (e.created_at AT TIME ZONE 'UTC')::date AS day,
           coalesce(sum(e.amount) FILTER (WHERE t.kind = 'recharge'), 0) AS recharged,
           coalesce(-sum(e.amount) FILTER (WHERE t.kind = 'capture'), 0) AS consumed,
           coalesce(sum(e.amount) FILTER (WHERE t.kind IN ('adjustment', 'reversal')), 0) AS adjustments
    FROM ledger_entries e JOIN acct a ON a.id = e.account_id JOIN ledger_transactions t ON t.id = e.transaction_id
    WHERE e.created_at >= %(start)s AND e.created_at < %(end)s
    GROUP BY 1, 2
),
released AS (
    SELECT a.tenant_id, (h.resolved_at AT TIME ZONE 'UTC')::date AS day,
           sum(h.amount - coalesce(h.captured_amount, 0)) AS released
    FROM holds h JOIN acct a ON a.id = h.account_id
    WHERE h.status <> 'held' AND h.resolved_at >= %(start)s AND h.resolved_at < %(end)s
    GROUP BY 1, 2
),
tenants AS (
    SELECT tenant_id FROM opening UNION SELECT tenant_id FROM moves UNION SELECT tenant_id FROM released
),
grid AS (
    SELECT tn.tenant_id, d::date AS day
    FROM tenants tn CROSS JOIN generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d
),
daily AS (
    SELECT g.tenant_id, g.day, coalesce(o.amount, 0) AS opening_before,
           coalesce(m.recharged, 0) AS recharged, coalesce(m.consumed, 0) AS consumed,
           coalesce(r.released, 0) AS released, coalesce(m.adjustments, 0) AS adjustments
    FROM grid g
    LEFT JOIN opening o ON o.tenant_id = g.tenant_id
    LEFT JOIN moves m ON m.tenant_id = g.tenant_id AND m.day = g.day
    LEFT JOIN released r ON r.tenant_id = g.tenant_id AND r.day = g.day
)
SELECT tenant_id, day, recharged, consumed, released, adjustments,
       opening_before + coalesce(sum(recharged - consumed + adjustments) OVER (
           PARTITION BY tenant_id ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS opening
FROM daily ORDER BY tenant_id, day
"""


def _scope_sql(tenant_scope: int | None, tenant_id: int | None) -> tuple[str, dict[str, Any]]:
    parts, params = [], {}
    for name, value in (("tenant_scope", tenant_scope), ("tenant_id", tenant_id)):
        if value is not None:
            parts.append(f"AND a.tenant_id = %({name})s")
            params[name] = value
    return " ".join(parts), params


def daily_report(
    session: Session, *, first: date, last: date, tenant_scope: int | None, tenant_id: int | None
) -> list[DailyRow]:
    """Per tenant and UTC day (`first` to `last`, both included), over the tenant's user and pool accounts:
    opening balance, recharged, consumed (captures), adjustments (adjustments and reversals) and closing, with
    opening + recharged - consumed + adjustments = closing. Everything comes from ledger entries, set-based, in one
    statement (one snapshot). A transfer between two accounts of the same tenant (pool to user) nets to zero.

    `released` is informational: tokens that left a hold without being charged that day (released or expired
    holds, and the unused rest of a partial capture). A hold never changes the balance (it only moves tokens from
    available to held and back), so released is not part of the identity.

    Accounts without a tenant (staff users) are listed under tenant_id None, for staff only."""
    scope, params = _scope_sql(tenant_scope, tenant_id)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    params.update(start=start, end=end, first=first, last=last)
    rows = session.connection().exec_driver_sql(_DAILY_SQL.format(scope=scope), params).mappings()
    out = []
    for row in rows:
        closing = row["opening"] + row["recharged"] - row["consumed"] + row["adjustments"]
        out.append(
            DailyRow(
                tenant_id=row["tenant_id"] or None,
                day=row["day"],
                opening=int(row["opening"]),
                recharged=int(row["recharged"]),
                consumed=int(row["consumed"]),
                released=int(row["released"]),
                adjustments=int(row["adjustments"]),
                closing=int(closing),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class LiabilityLine:
    tenant_id: int | None
    kind: str  # user | pool
    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held


_LIABILITY_NOW_SQL = """
SELECT coalesce(a.tenant_id, 0) AS tenant_id, a.kind, sum(a.balance) AS balance, sum(a.held) AS held
FROM ledger_accounts a WHERE a.balance_tracked {scope}
GROUP BY 1, 2 ORDER BY 1, 2
"""

_LIABILITY_AT_SQL = """
WITH acct AS (SELECT a.id, coalesce(a.tenant_id, 0) AS tenant_id, a.kind FROM ledger_accounts a
              WHERE a.balance_tracked {scope}),
bal AS (SELECT e.account_id, sum(e.amount) AS amount FROM ledger_entries e JOIN acct ON acct.id = e.account_id
        WHERE e.created_at <= %(at)s GROUP BY 1),
held AS (SELECT h.account_id, sum(h.amount) AS amount FROM holds h JOIN acct ON acct.id = h.account_id
         WHERE h.created_at <= %(at)s AND (h.resolved_at IS NULL OR h.resolved_at > %(at)s) GROUP BY 1)
SELECT acct.tenant_id, acct.kind, coalesce(sum(bal.amount), 0) AS balance, coalesce(sum(held.amount), 0) AS held
FROM acct LEFT JOIN bal ON bal.account_id = acct.id LEFT JOIN held ON held.account_id = acct.id
GROUP BY 1, 2 ORDER BY 1, 2
"""


def liability(
    session: Session, *, at: datetime | None, tenant_scope: int | None, tenant_id: int | None
) -> list[LiabilityLine]:
    """Tokens owed to customers: per tenant and account kind (user, pool), balance and held (available = balance -
    held). `at=None` reads the accounts' balance and held now; a past instant sums the entries up to it for the
    balance, and the holds open at it (made by then, not resolved by then) for held. One statement: one snapshot.
    """
    scope, params = _scope_sql(tenant_scope, tenant_id)
    if at is None:
        sql = _LIABILITY_NOW_SQL.format(scope=scope)
    else:
        sql = _LIABILITY_AT_SQL.format(scope=scope)
        params["at"] = _utc(at)
    return [
        LiabilityLine(
            tenant_id=row["tenant_id"] or None,
            kind="pool" if row["kind"] == "tenant_pool" else "user",
            balance=int(row["balance"]),
            held=int(row["held"]),
        )
        for row in session.connection().exec_driver_sql(sql, params).mappings()
    ]


def column_names(log: LogSpec) -> Sequence[str]:
    return [c.name for c in log.columns]
