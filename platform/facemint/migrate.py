"""Running Alembic from code (CLI, `facemint up`, tests), and what the application's role may do.

Two roles touch the database. The owner (FACEMINT_DATABASE_OWNER_URL, else FACEMINT_DATABASE_URL) runs the
migrations and owns every table. The service connects as a login role that is a member of the application group
role (FACEMINT_DATABASE_APP_ROLE, default `facemint_app`), which `upgrade` grants exactly what the code needs, from
one table (`TABLE_PRIVILEGES`): rows are read and written, history only ever added to. Owning nothing, it cannot
ALTER, DROP or TRUNCATE a table nor disable a trigger; without UPDATE or DELETE on the journal it cannot rewrite
history (the append-only triggers refuse even the owner); `session_replication_role` is the superuser's."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, pool, text

from facemint.db import sqlalchemy_url

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_APP_ROLE = "facemint_app"
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Journal: history is added to, never changed (corrections are new rows).
APPEND_ONLY = ("SELECT", "INSERT")
# State that moves (its triggers say how: holds, jobs and approvals one way; balances only with their entries).
READ_WRITE = ("SELECT", "INSERT", "UPDATE")
# Written once by its migration, read by the service.
READ_ONLY = ("SELECT",)
OWNER_ONLY: tuple[str, ...] = ()

# Every relation in the schema, and what the service may do to it. No DELETE anywhere: the service never deletes a
# row (revoking, expiring and purging are updates), and no TRUNCATE, REFERENCES or TRIGGER for anyone but the owner.
# A relation the migrations create and this table does not name makes `upgrade` fail (and tests/test_database_roles).
TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "ledger_transactions": APPEND_ONLY,
    "ledger_entries": APPEND_ONLY,
    "audit_events": APPEND_ONLY,
    "ledger_seals": APPEND_ONLY,
    "ledger_seal_leaves": APPEND_ONLY,
    "prices": APPEND_ONLY,  # a new price is a new version
    "webhook_deliveries": APPEND_ONLY,  # one row per attempt
    "reconciliation_runs": APPEND_ONLY,  # one row per run: the dashboard's "last reconciliation"
    "hold_lot_allocations": APPEND_ONLY,  # which lots a hold reserved from
    "lot_consumptions": APPEND_ONLY,  # which lots a debit burned
    "grant_awards": APPEND_ONLY,  # once per (grant, period, account): the recurring grants' idempotency
    "credit_lot_epoch": READ_ONLY,  # the first transaction lots account for
    "ledger_accounts": READ_WRITE,
    "ledger_rollups": READ_WRITE,  # the sealer upserts the journal's sums (billing.reports.rollup)
    "holds": READ_WRITE,
    "credit_lots": READ_WRITE,  # remaining and held move with the account's balance and held
    "jobs": READ_WRITE,
    "recharge_batches": READ_WRITE,
    "recharge_approvals": READ_WRITE,
    "credit_grants": READ_WRITE,
    "credit_grant_periods": READ_WRITE,  # the workers add each run's figures to its period
    "tenants": READ_WRITE,
    "users": READ_WRITE,
    "api_keys": READ_WRITE,
    "webhook_events": READ_WRITE,
    "zendesk_assets": READ_WRITE,  # retired with deleted_at, never deleted
    "zendesk_connectors": READ_WRITE,
    "zendesk_results": READ_WRITE,
    "zendesk_tickets": READ_WRITE,
    "balance_alerts": READ_WRITE,  # thresholds, and whether each is armed (removing one stamps it)
    "abuse_rules": READ_WRITE,  # retired by `deleted_at`, never deleted
    "abuse_triggers": READ_WRITE,  # resolved once (a trigger in the migration), never deleted
    "alembic_version": OWNER_ONLY,
}
# Columns only the database writes (their defaults), which the service may therefore not name: the journal is
# numbered and dated by Postgres, so the service cannot slip a row into the sealed past (billing.sealing orders
# rows by the id of the transaction that wrote them, `xid`).
SET_BY_DATABASE: dict[str, tuple[str, ...]] = {
    "ledger_entries": ("id", "xid"),
    "audit_events": ("id", "xid"),
}
# The schema's functions are all trigger functions (which cannot be called directly) and its identity columns
# need no sequence privileges to insert: the role gets neither. CONNECT and TEMPORARY on the database (batch
# recharges stage their rows in temporary tables) are granted only when PUBLIC does not already have them.


class RoleSetupError(RuntimeError):
    """The application role cannot be set up as it must be; the message says what to do."""


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(
    owner_url: str, revision: str = "head", *, app_role: str = DEFAULT_APP_ROLE, app_login: str | None = None
) -> None:
    """Migrate as the owner, then grant `app_role` what the service needs, in one transaction: a schema is never
    left migrated with stale privileges (a relation nobody classified rolls the migration back). `app_login`, the
    role the service will log in as, must already be a member of `app_role` (checked first, once the group role
    exists: an administrator creates the login, with its password)."""
    engine = create_engine(sqlalchemy_url(owner_url), poolclass=pool.NullPool, hide_parameters=True)
    try:
        with engine.begin() as connection:
            if app_login is not None:
                _refuse_the_owner(connection, app_role)
                ensure_group_role(connection, app_role)
                check_login(connection, app_login, app_role)
            config = alembic_config(owner_url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            grant_app_role(connection, app_role)
    finally:
        engine.dispose()


def grant_app_role(connection: Connection, role: str) -> None:
    """Create the group role if it is missing (and the owner may), then make its privileges exactly
    `TABLE_PRIVILEGES`; refuse a role (or login member) that could do more."""
    name = _quoted_role(role)
    _refuse_the_owner(connection, role)
    ensure_group_role(connection, role)
    relations = list(
        connection.execute(
            text(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
                "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY c.relname"
            )
        ).scalars()
    )
    unclassified = sorted(set(relations) - set(TABLE_PRIVILEGES))
    if unclassified:
        raise RoleSetupError(
            f"no privileges are defined for {', '.join(unclassified)}: add them to facemint.migrate.TABLE_PRIVILEGES"
        )
    schema = connection.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
        connection.execute(text(f"REVOKE ALL ON ALL {kind} IN SCHEMA {schema} FROM {name}"))
    connection.execute(text(f"REVOKE ALL ON SCHEMA {schema} FROM {name}"))
    connection.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {name}"))
    for relation in relations:
        table = f"{schema}.{_quoted(connection, relation)}"
        whole = [
            p for p in TABLE_PRIVILEGES[relation] if p not in ("INSERT", "UPDATE") or relation not in SET_BY_DATABASE
        ]
        if whole:
            connection.execute(text(f"GRANT {', '.join(whole)} ON {table} TO {name}"))
        partial = [p for p in TABLE_PRIVILEGES[relation] if p not in whole]
        if partial:
            columns = ", ".join(
                _quoted(connection, column)
                for column in _columns(connection, relation)
                if column not in SET_BY_DATABASE[relation]
            )
            connection.execute(text(f"GRANT {', '.join(f'{p} ({columns})' for p in partial)} ON {table} TO {name}"))
    for privilege in ("CONNECT", "TEMPORARY"):
        held = connection.execute(
            text("SELECT has_database_privilege(:role, current_database(), :privilege)"),
            {"role": role, "privilege": privilege},
        ).scalar_one()
        if not held:
            database = connection.execute(text("SELECT quote_ident(current_database())")).scalar_one()
            connection.execute(text(f"GRANT {privilege} ON DATABASE {database} TO {name}"))
    if _may_create_in_schema(connection, role):
        # Before Postgres 15 every role may create tables in `public`: only its owner can take that back.
        connection.execute(text(f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC"))
    problems = app_role_problems(connection, role)
    if problems:
        raise RoleSetupError(f"the application role {role} must not be able to do more: " + "; ".join(problems))


def ensure_group_role(connection: Connection, role: str) -> None:
    """The group role the service's login roles are members of: created NOLOGIN if missing, when the owner may."""
    name = _quoted_role(role)
    if _role_exists(connection, role):
        return
    may = connection.execute(
        text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    ).scalar_one()
    if not may:
        owner = connection.execute(text("SELECT current_user")).scalar_one()
        raise RoleSetupError(
            f"the application role {role} does not exist and {owner} may not create roles: "
            f"create it once as an administrator (CREATE ROLE {name} NOLOGIN), or give {owner} CREATEROLE"
        )
    # Several databases on one server may be migrated at once (roles are shared): whoever comes second finds it.
    connection.execute(
        text(
            f"DO $$ BEGIN CREATE ROLE {name} NOLOGIN; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
    )


def ensure_login_role(connection: Connection, login: str, *, member_of: str, password: str | None = None) -> None:
    """A login role for the service in the group `member_of` (embedded servers and tests; in production an
    administrator creates it). An existing role keeps its attributes; `password` (if given) is set."""
    ensure_group_role(connection, member_of)
    name, group = _quoted_role(login), _quoted_role(member_of)
    connection.execute(
        text(
            f"DO $$ BEGIN CREATE ROLE {name} LOGIN; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
    )
    connection.execute(text(f"GRANT {group} TO {name}"))
    if password is not None:
        # A bound parameter (psycopg2 binds on the client): logged statements show the placeholder, not the password.
        connection.execute(text(f"ALTER ROLE {name} PASSWORD :password"), {"password": password})


def app_role_problems(connection: Connection, role: str) -> list[str]:
    """What the group role, or any other role that takes its privileges (its login members, bar the owner running
    this), could do beyond its grants: be a superuser, create roles, bypass row security, replicate, own something
    in this database or act as a role that does, create objects in the schema."""
    rows = connection.execute(
        text(
            """
            WITH RECURSIVE members(oid) AS (
                SELECT oid FROM pg_roles WHERE rolname = :role
                UNION
                SELECT m.member FROM pg_auth_members m JOIN members ON m.roleid = members.oid
            ),
            owners(oid) AS (
                SELECT relowner FROM pg_class WHERE relnamespace = current_schema()::regnamespace
                UNION SELECT proowner FROM pg_proc WHERE pronamespace = current_schema()::regnamespace
                UNION SELECT nspowner FROM pg_namespace WHERE oid = current_schema()::regnamespace
                UNION SELECT datdba FROM pg_database WHERE datname = current_database()
            )
            SELECT r.rolname,
                   array_remove(ARRAY[
                       CASE WHEN r.rolsuper THEN 'is a superuser' END,
                       CASE WHEN r.rolcreaterole THEN 'may create roles' END,
                       CASE WHEN r.rolbypassrls THEN 'bypasses row security' END,
                       CASE WHEN r.rolreplication THEN 'may replicate' END,
                       CASE WHEN EXISTS (SELECT 1 FROM owners o WHERE pg_has_role(r.oid, o.oid, 'MEMBER'))
                            THEN 'owns objects in this database (or is a member of their owner)' END,
                       CASE WHEN has_schema_privilege(r.oid, current_schema(), 'CREATE')
                            THEN 'may create objects in the schema' END
                   ], NULL) AS problems
            FROM pg_roles r JOIN members ON members.oid = r.oid
            WHERE r.rolname <> current_user
            ORDER BY r.rolname
            """
        ),
        {"role": role},
    ).all()
    return [f"{row.rolname} {', '.join(row.problems)}" for row in rows if row.problems]


def check_login(connection: Connection, login: str, role: str) -> None:
    """The role the service logs in as must exist and be a member of the application group role."""
    member = connection.execute(
        text(
            "SELECT pg_has_role(r.oid, g.oid, 'USAGE') FROM pg_roles r, pg_roles g "
            "WHERE r.rolname = :login AND g.rolname = :role"
        ),
        {"login": login, "role": role},
    ).scalar_one_or_none()
    if not member:
        raise RoleSetupError(
            f"the service logs in as {login} (FACEMINT_DATABASE_URL), which is not a member of {role}: create it "
            f"as an administrator (CREATE ROLE {login} LOGIN PASSWORD '...' IN ROLE {role}, or GRANT {role} TO {login})"
        )


def login_url(url: str, user: str, password: str | None = None) -> str:
    """`url` with its credentials replaced: the same server and database, as another role."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


def _columns(connection: Connection, relation: str) -> list[str]:
    return list(
        connection.execute(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(quote_ident(:t)) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
            {"t": relation},
        ).scalars()
    )


def _quoted(connection: Connection, identifier: str) -> str:
    return str(connection.execute(text("SELECT quote_ident(:i)"), {"i": identifier}).scalar_one())


def _refuse_the_owner(connection: Connection, role: str) -> None:
    if connection.execute(text("SELECT current_user = :role"), {"role": role}).scalar_one():
        raise RoleSetupError(f"the application role {role} is the role that migrates: give the service its own")


def _role_exists(connection: Connection, role: str) -> bool:
    return bool(connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first())


def _may_create_in_schema(connection: Connection, role: str) -> bool:
    return bool(
        connection.execute(
            text("SELECT has_schema_privilege(:role, current_schema(), 'CREATE')"), {"role": role}
        ).scalar_one()
    )


def _quoted_role(role: str) -> str:
    if not _ROLE_NAME.match(role):
        raise RoleSetupError(f"{role!r} is not a role name facemint uses (lower case letters, digits, _)")
    return f'"{role}"'
