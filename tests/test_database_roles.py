"""The service's database role (facemint.migrate): the tests connect as it, with production's privileges. It reads
and writes rows as the code needs, adds to the journal and never changes it, and cannot alter the schema, disable a
trigger, truncate, skip the triggers (replica mode) or become the owner; the owner migrates."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, Engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from facemint.cli.main import cli
from facemint.config import Settings, get_settings
from facemint.migrate import (
    APPEND_ONLY,
    DEFAULT_APP_ROLE,
    SET_BY_DATABASE,
    TABLE_PRIVILEGES,
    RoleSetupError,
    app_role_problems,
    ensure_group_role,
    grant_app_role,
    login_url,
)
from facemint.orm import Base
from tests.factories import create_user, fund

INSUFFICIENT_PRIVILEGE = "42501"
CHECK_VIOLATION = "23514"
JOURNAL = sorted(table for table, privileges in TABLE_PRIVILEGES.items() if privileges == APPEND_ONLY)
EVERY_PRIVILEGE = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


@pytest.fixture
def superuser_transaction(owner_transaction: Connection) -> Connection:
    """The owner's transaction, for tests that create roles with attributes only a superuser may give (the
    embedded server's owner is one; a FACEMINT_TEST_DATABASE_URL may not be)."""
    if not owner_transaction.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar_one():
        pytest.skip("needs the owner to be a superuser")
    return owner_transaction


@pytest.fixture
def owner_transaction(owner_engine: Engine) -> Iterator[Connection]:
    """The owner's connection in a transaction that is always rolled back (roles included: they are
    transactional too)."""
    with owner_engine.connect() as conn:
        transaction = conn.begin()
        try:
            yield conn
        finally:
            transaction.rollback()


def _refused(engine: Engine, sql: str, **params: object) -> str:
    """The SQLSTATE Postgres refuses `sql` with, run by the service's role."""
    with pytest.raises(DBAPIError) as info, engine.begin() as conn:
        conn.execute(text(sql), params)
    code = getattr(info.value.orig, "pgcode", None)
    assert code is not None, info.value
    return str(code)


class TestClassification:
    def test_every_table_has_its_privileges_defined(self, owner_engine: Engine) -> None:
        """A new table (in the ORM, or only in a migration) fails here until facemint.migrate classifies it."""
        assert set(TABLE_PRIVILEGES) == set(Base.metadata.tables) | {"alembic_version"}
        with owner_engine.connect() as conn:
            relations = set(
                conn.execute(
                    text(
                        "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
                        "AND relkind IN ('r', 'p', 'v', 'm', 'f')"
                    )
                ).scalars()
            )
        assert relations == set(TABLE_PRIVILEGES)
        assert set(SET_BY_DATABASE) <= set(TABLE_PRIVILEGES)

    def test_granted_privileges_are_exactly_the_classification(self, engine: Engine) -> None:
        with engine.connect() as conn:
            for table, expected in TABLE_PRIVILEGES.items():
                for privilege in EVERY_PRIVILEGE:
                    whole = conn.execute(
                        text("SELECT has_table_privilege(:t, :p)"), {"t": table, "p": privilege}
                    ).scalar_one()
                    if table in SET_BY_DATABASE and privilege in ("INSERT", "UPDATE"):
                        # Column by column: every column but those the database sets.
                        some = conn.execute(
                            text("SELECT has_any_column_privilege(:t, :p)"), {"t": table, "p": privilege}
                        ).scalar_one()
                        assert not whole, (table, privilege)
                        assert some == (privilege in expected), (table, privilege)
                    else:
                        assert whole == (privilege in expected), (table, privilege)
            for table, columns in SET_BY_DATABASE.items():
                for column in columns:
                    assert not conn.execute(
                        text("SELECT has_column_privilege(:t, :c, 'INSERT')"), {"t": table, "c": column}
                    ).scalar_one()

    def test_a_table_nobody_classified_fails_the_migration(self, owner_transaction: Connection) -> None:
        owner_transaction.execute(text("CREATE TABLE stray_table (x int)"))
        with pytest.raises(RoleSetupError, match="stray_table"):
            grant_app_role(owner_transaction, DEFAULT_APP_ROLE)

    def test_granting_again_takes_back_what_was_added_by_hand(self, owner_transaction: Connection) -> None:
        owner_transaction.execute(text(f"GRANT DELETE, TRUNCATE ON users, ledger_entries TO {DEFAULT_APP_ROLE}"))
        grant_app_role(owner_transaction, DEFAULT_APP_ROLE)
        for table in ("users", "ledger_entries"):
            for privilege in ("DELETE", "TRUNCATE"):
                assert not owner_transaction.execute(
                    text("SELECT has_table_privilege(:r, :t, :p)"),
                    {"r": DEFAULT_APP_ROLE, "t": table, "p": privilege},
                ).scalar_one()


class TestTheServiceRole:
    def test_the_tests_connect_as_a_login_member_of_the_group_not_as_the_owner(
        self, engine: Engine, owner_engine: Engine
    ) -> None:
        with engine.connect() as conn:
            me = conn.execute(
                text(
                    "SELECT current_user AS name, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication, "
                    "pg_has_role(current_user, :group, 'USAGE') AS in_group FROM pg_roles WHERE rolname = current_user"
                ),
                {"group": DEFAULT_APP_ROLE},
            ).one()
        with owner_engine.connect() as conn:
            owner = conn.execute(text("SELECT current_user")).scalar_one()
            assert app_role_problems(conn, DEFAULT_APP_ROLE) == []
            assert not conn.execute(
                text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": DEFAULT_APP_ROLE}
            ).scalar_one()
        assert me.name != owner
        assert me.in_group
        assert [me.rolsuper, me.rolcreaterole, me.rolcreatedb, me.rolbypassrls, me.rolreplication] == [False] * 5

    def test_the_normal_workload_runs(self, engine: Engine, session: Session) -> None:
        """Users, postings and audit events work as the service's role (the whole suite runs as it too)."""
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=25)
        with engine.connect() as conn:
            balance = conn.execute(
                text("SELECT balance FROM ledger_accounts WHERE id = :id"), {"id": user.account_id}
            ).scalar_one()
        assert balance == 25

    def test_cannot_alter_disable_triggers_or_skip_them(self, engine: Engine) -> None:
        for statement in (
            "ALTER TABLE ledger_entries DISABLE TRIGGER ALL",
            "ALTER TABLE ledger_accounts DISABLE TRIGGER ledger_accounts_follow_journal",
            "ALTER TABLE users ADD COLUMN x int",
            "ALTER TABLE ledger_entries OWNER TO CURRENT_USER",
            "DROP TABLE audit_events",
            "CREATE TABLE public.shadow_entries (x int)",
            "CREATE TRIGGER t BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION facemint_forbid_change()",
            "SET session_replication_role = replica",
            "SET LOCAL session_replication_role = replica",
            "SELECT version_num FROM alembic_version",
        ):
            assert _refused(engine, statement) == INSUFFICIENT_PRIVILEGE, statement

    def test_cannot_become_the_owner(self, engine: Engine, owner_engine: Engine) -> None:
        with owner_engine.connect() as conn:
            owner = conn.execute(text("SELECT quote_ident(current_user)")).scalar_one()
        assert _refused(engine, f"SET ROLE {owner}") == INSUFFICIENT_PRIVILEGE

    @pytest.mark.parametrize("table", JOURNAL)
    def test_cannot_change_the_journal(self, engine: Engine, table: str) -> None:
        column = _any_column(engine, table)
        for statement in (f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}"):
            assert _refused(engine, statement) == INSUFFICIENT_PRIVILEGE, statement
        assert _refused(engine, f"TRUNCATE {table}") == INSUFFICIENT_PRIVILEGE
        assert _refused(engine, f"SELECT 1 FROM {table} FOR UPDATE") == INSUFFICIENT_PRIVILEGE

    def test_cannot_date_a_journal_row_into_the_sealed_past(self, engine: Engine) -> None:
        statement = "INSERT INTO audit_events (action, target_type, xid) VALUES ('x', 'y', '1'::xid8)"
        assert _refused(engine, statement) == INSUFFICIENT_PRIVILEGE

    def test_deletes_and_truncates_nothing(self, engine: Engine) -> None:
        for table in TABLE_PRIVILEGES:
            assert _refused(engine, f"DELETE FROM {table}") == INSUFFICIENT_PRIVILEGE, table
            assert _refused(engine, f"TRUNCATE {table} CASCADE") == INSUFFICIENT_PRIVILEGE, table

    def test_a_balance_moves_only_with_its_journal_entry(self, engine: Engine, session: Session) -> None:
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=10)
        code = _refused(engine, "UPDATE ledger_accounts SET balance = balance + 1 WHERE id = :id", id=user.account_id)
        assert code == CHECK_VIOLATION  # ledger_accounts_follow_journal, for the owner as much as for the service


class TestRoleSetup:
    def test_a_missing_group_role_is_created_without_login(self, owner_transaction: Connection) -> None:
        role = f"facemint_test_{uuid.uuid4().hex[:12]}"
        ensure_group_role(owner_transaction, role)
        ensure_group_role(owner_transaction, role)  # once
        can_login = owner_transaction.execute(
            text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).scalar_one()
        assert can_login is False

    def test_an_owner_that_may_not_create_roles_is_told_what_to_do(self, superuser_transaction: Connection) -> None:
        migrator = f"facemint_test_{uuid.uuid4().hex[:12]}"
        superuser_transaction.execute(text(f"CREATE ROLE {migrator} NOCREATEROLE"))
        superuser_transaction.execute(text(f"SET LOCAL ROLE {migrator}"))
        with pytest.raises(RoleSetupError, match=r"CREATE ROLE \"facemint_absent\" NOLOGIN"):
            ensure_group_role(superuser_transaction, "facemint_absent")

    @pytest.mark.parametrize(
        ("attributes", "problem"),
        [
            ("SUPERUSER", "is a superuser"),
            ("BYPASSRLS", "bypasses row security"),
            ("REPLICATION", "may replicate"),
            ("CREATEROLE", "may create roles"),
        ],
    )
    def test_a_member_that_could_do_more_is_refused(
        self, superuser_transaction: Connection, attributes: str, problem: str
    ) -> None:
        login = f"facemint_test_{uuid.uuid4().hex[:12]}"
        superuser_transaction.execute(text(f"CREATE ROLE {login} LOGIN {attributes} IN ROLE {DEFAULT_APP_ROLE}"))
        with pytest.raises(RoleSetupError, match=f"{login} {problem}"):
            grant_app_role(superuser_transaction, DEFAULT_APP_ROLE)

    def test_a_member_that_owns_a_table_is_refused(self, superuser_transaction: Connection) -> None:
        login = f"facemint_test_{uuid.uuid4().hex[:12]}"
        superuser_transaction.execute(text(f"CREATE ROLE {login} LOGIN IN ROLE {DEFAULT_APP_ROLE}"))
        superuser_transaction.execute(text(f"ALTER TABLE users OWNER TO {login}"))
        with pytest.raises(RoleSetupError, match=f"{login} owns objects"):
            grant_app_role(superuser_transaction, DEFAULT_APP_ROLE)

    def test_the_owner_cannot_be_the_application_role(self, owner_transaction: Connection) -> None:
        owner = owner_transaction.execute(text("SELECT current_user")).scalar_one()
        with pytest.raises(RoleSetupError, match="is the role that migrates"):
            grant_app_role(owner_transaction, owner)

    def test_migrate_refuses_a_service_login_outside_the_group(self, settings: Settings, owner_url: str) -> None:
        """Checked before anything is migrated: the api would otherwise start and fail on its first query."""
        assert settings.database_url is not None
        stranger = f"facemint_test_{uuid.uuid4().hex[:12]}"
        env = {
            "FACEMINT_ENV": "dev",
            "FACEMINT_DATABASE_URL": login_url(settings.database_url, stranger),
            "FACEMINT_DATABASE_OWNER_URL": owner_url,
        }
        try:
            result = CliRunner().invoke(cli, ["migrate"], env=env)
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(f"error: the service logs in as {stranger} (FACEMINT_DATABASE_URL)")
        assert f"IN ROLE {DEFAULT_APP_ROLE}" in result.stderr
        assert result.stderr.count("\n") == 1

    def test_migrate_fails_in_one_line(self, settings: Settings, owner_url: str) -> None:
        owner = make_url(owner_url).username
        assert owner is not None
        env = {
            "FACEMINT_ENV": "dev",
            "FACEMINT_DATABASE_URL": settings.database_url,
            "FACEMINT_DATABASE_OWNER_URL": owner_url,
            "FACEMINT_DATABASE_APP_ROLE": owner,
        }
        try:
            result = CliRunner().invoke(cli, ["migrate"], env=env)
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: the application role")
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.output


def _any_column(engine: Engine, table: str) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                text(
                    "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attnum > 0 "
                    "AND NOT attisdropped AND attidentity = '' AND attgenerated = '' ORDER BY attnum LIMIT 1"
                ),
                {"t": table},
            ).scalar_one()
        )
