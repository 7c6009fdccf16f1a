"""Tenant visibility: the one place that decides which tenant's objects a caller may see or act on.

A caller's *tenant scope* is None for platform staff (every tenant) and its own tenant for everyone else
(`Principal.tenant_scope`). An object outside the scope answers 404, as if it did not exist, so a probe learns
nothing about other tenants. Nothing else in the service compares tenant ids by hand (a test checks it)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select

from facemint.errors import FacemintError

SelectT = TypeVar("SelectT", bound=Select)  # any select; the row type is kept


def is_visible(tenant_scope: int | None, tenant_id: int | None) -> bool:
    """Whether an object of `tenant_id` (None: a platform object, e.g. a staff user) is within the scope."""
    if tenant_scope is None:
        return True
    return tenant_id is not None and tenant_id == tenant_scope


def ensure_visible(tenant_scope: int | None, tenant_id: int | None, *, not_found: FacemintError) -> None:
    """Raise `not_found` (the domain's own 404) when the object is outside the scope."""
    if not is_visible(tenant_scope, tenant_id):
        raise not_found


def acting_tenant(tenant_scope: int | None, requested: int | None, *, not_found: FacemintError) -> int | None:
    """The tenant a request acts within: a tenant-scoped caller's own (naming another is 404), or for staff the
    one it names (None when it names none)."""
    if tenant_scope is None:
        return requested
    if requested is not None and requested != tenant_scope:
        raise not_found
    return tenant_scope


def within_tenant(
    query: SelectT, tenant_column: Any, *, tenant_scope: int | None, tenant_id: int | None = None
) -> SelectT:
    """Scope a list to the caller's tenant (`tenant_scope`, None for staff), plus an optional `tenant_id` filter
    (an endpoint has already refused another tenant's id with 404: `Principal.ensure_tenant_visible`)."""
    return query.where(*tenant_conditions(tenant_column, tenant_scope=tenant_scope, tenant_id=tenant_id))


def tenant_conditions(
    tenant_column: Any, *, tenant_scope: int | None, tenant_id: int | None = None
) -> list[ColumnElement[bool]]:
    """The SQL conditions `within_tenant` adds, for a statement that is not a select (an update of a tenant's
    rows)."""
    return [tenant_column == value for value in (tenant_scope, tenant_id) if value is not None]


def sql_conditions(
    column: str, *, tenant_scope: int | None, tenant_id: int | None = None, named: bool = False
) -> tuple[list[str], dict[str, Any]]:
    """`tenant_conditions` for statements written as SQL text (COPY exports, reports): the caller's tenant
    (`tenant_scope`, None for staff) and the optional `tenant_id` filter as conditions on `column` (an SQL
    expression of the code's own, never input), with their parameters in psycopg2's `%(name)s` style or, `named`,
    SQLAlchemy's `:name`."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for name, value in (("tenant_scope", tenant_scope), ("tenant_id", tenant_id)):
        if value is not None:
            parts.append(f"{column} = :{name}" if named else f"{column} = %({name})s")
            params[name] = value
    return parts, params


# --- what a tenant-scoped reader sees of a batch's rows ----------------------------------------------------------
# A staff batch scoped to a tenant may name people outside it (another tenant's users, platform staff): such a row
# fails as `user_of_other_tenant`. A tenant-scoped reader sees the row's number and code, never who it named. The
# rule is written twice, in Python (`redact_batch_result`, `redact_audit_after`) and in SQL for the finance logs
# (`redacted_audit_after_sql`); tests read every route both ways.
OUTSIDER_ROW_CODES = ("user_of_other_tenant",)
ROW_IDENTIFIERS = ("email", "user_id")


def redact_batch_result(result: dict[str, Any] | None, tenant_scope: int | None) -> dict[str, Any] | None:
    """A batch result (a batch's stored result, an approval's `result`) as a reader of `tenant_scope` may see it:
    unchanged for staff; for a tenant, the failed rows naming someone outside the tenant lose their email and
    user id."""
    if tenant_scope is None or not isinstance(result, dict) or not isinstance(result.get("failed"), list):
        return result
    return {**result, "failed": [_redacted_row(row) for row in result["failed"]]}


def _redacted_row(row: Any) -> Any:
    if not isinstance(row, dict) or row.get("code") not in OUTSIDER_ROW_CODES:
        return row
    return {key: value for key, value in row.items() if key not in ROW_IDENTIFIERS}


def redact_audit_after(after: dict[str, Any] | None, tenant_scope: int | None) -> dict[str, Any] | None:
    """An audit event's `after` as a reader of `tenant_scope` may see it: a batch result recorded in it (approval
    decisions recorded before decisions kept counts only) is redacted as `redact_batch_result` does."""
    if tenant_scope is None or not isinstance(after, dict) or not isinstance(after.get("result"), dict):
        return after
    return {**after, "result": redact_batch_result(after["result"], tenant_scope)}


def redacted_audit_after_sql(after_sql: str, *, scope_sql: str) -> str:
    """`redact_audit_after` in SQL over the JSONB expression `after_sql`, for the reader whose tenant scope the
    placeholder `scope_sql` binds (NULL for staff: unchanged). `after_sql` is evaluated once."""
    codes = ", ".join(f"'{code}'" for code in OUTSIDER_ROW_CODES)
    dropped = "".join(f" - '{key}'" for key in ROW_IDENTIFIERS)
    row = (
        f"CASE WHEN jsonb_typeof(r.item) = 'object' AND r.item ->> 'code' IN ({codes}) "
        f"THEN r.item{dropped} ELSE r.item END"
    )
    failed = "x.after -> 'result' -> 'failed'"
    return (
        f"(SELECT CASE WHEN CAST({scope_sql} AS bigint) IS NOT NULL AND jsonb_typeof({failed}) = 'array' "
        f"THEN jsonb_set(x.after, '{{result,failed}}', (SELECT coalesce(jsonb_agg({row} ORDER BY r.n), '[]'::jsonb) "
        f"FROM jsonb_array_elements({failed}) WITH ORDINALITY AS r(item, n))) "
        f"ELSE x.after END FROM (SELECT {after_sql} AS after) AS x)"
    )
