"""Architecture rules, checked on the source tree: the dependency rule between the three packages, the package
layout, the ORM matching the migrations, errors raised only through the problem-details types, and services
leaving the commit to the request or job boundary."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, MetaData, Text

ROOT = Path(__file__).resolve().parents[1]
FACEMINT = ROOT / "platform" / "facemint"
TOP_LEVEL_PACKAGES = {"facemint", "billing", "inference"}
# What may depend on what: billing and inference never import the service (facemint), nor each other.
FORBIDDEN = {"billing": {"facemint", "inference"}, "inference": {"facemint", "billing"}}
# Repository folders that hold Python: the three packages (facemint under platform/), the migrations, the
# tests and the benchmarks.
PYTHON_FOLDERS = {"billing", "inference", "platform", "migrations", "tests", "bench", "scripts"}
NON_DISTRIBUTED_PACKAGES = {"tests", "bench"}


def _python_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path


def _imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import, including importlib.import_module("...") and __import__."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _violations(package: str, source: str, filename: str) -> list[str]:
    found = []
    for line, module in _imported_modules(ast.parse(source, filename=filename)):
        if module.split(".")[0] in FORBIDDEN[package]:
            found.append(f"{filename}:{line} imports {module}")
    return found


# --- the dependency rule ---------------------------------------------------------------------------------


def test_import_linter_contracts_are_kept() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {c["type"] for c in contracts} == {"forbidden", "independence"}
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is not installed in this environment"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout, result.stdout
    for contract in contracts:
        assert f"{contract['name']} KEPT" in result.stdout


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_billing_and_inference_import_neither_the_service_nor_each_other(package: str) -> None:
    files = list(_python_files(ROOT / package))
    assert files, f"no Python files under {package}/"
    violations = [v for path in files for v in _violations(package, path.read_text(), str(path.relative_to(ROOT)))]
    assert violations == []


def test_the_import_scan_sees_every_kind_of_import() -> None:
    source = "\n".join(
        (
            "import facemint",
            "from facemint.errors import FacemintError",
            "import os, inference.engine",
            "import importlib",
            "importlib.import_module('facemint.app')",
            "def late():",
            "    from facemint import deps",
            "    return __import__('inference')",
            "from . import sibling",
            "from billing.ledger import service",
        )
    )
    assert [v.split(" imports ")[1] for v in _violations("billing", source, "probe.py")] == [
        "facemint",
        "facemint.errors",
        "inference.engine",
        "facemint.app",
        "facemint",
        "inference",
    ]


# --- the package layout ----------------------------------------------------------------------------------


def test_platform_is_not_a_package() -> None:
    """`platform/` holds the facemint package; as a package itself it would shadow the standard library's
    `platform` module for everything run from the repository root."""
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert sorted(p.name for p in (ROOT / "platform").iterdir() if p.suffix == ".py") == []
    packages = sorted(p.name for p in (ROOT / "platform").iterdir() if (p / "__init__.py").exists())
    assert packages == ["facemint"]
    result = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.__file__); print(platform.system())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    location, system = result.stdout.splitlines()
    assert not Path(location).resolve().is_relative_to(ROOT / "platform")
    assert system


def test_no_other_top_level_python_packages() -> None:
    visible = [p for p in ROOT.iterdir() if not p.name.startswith(".")]
    assert [p.name for p in visible if p.is_file() and p.suffix == ".py"] == [], "no loose modules at the root"
    holding_python = {p.name for p in visible if p.is_dir() and any(_python_files(p))}
    assert holding_python <= PYTHON_FOLDERS, holding_python - PYTHON_FOLDERS
    packages = {p.name for p in visible if (p / "__init__.py").exists()}
    assert packages <= {"billing", "inference"} | NON_DISTRIBUTED_PACKAGES, packages
    assert {"billing", "inference"} <= packages
    assert (FACEMINT / "__init__.py").exists()


def test_the_distribution_ships_exactly_the_three_packages() -> None:
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = {
        package.split(".")[0]
        for where in config["where"]
        for package in find_packages(where=str(ROOT / where), include=config["include"])
    }
    assert found == TOP_LEVEL_PACKAGES


# --- the ORM and the migrations ---------------------------------------------------------------------------


def _drift(engine: Engine, metadata: MetaData) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, metadata))


def test_the_orm_matches_the_migrated_schema(engine: Engine) -> None:
    import facemint.orm

    tables = set(facemint.orm.Base.metadata.tables)
    assert {"users", "tenants", "api_keys", "audit_events", "ledger_accounts", "recharge_batches"} <= tables
    assert _drift(engine, facemint.orm.Base.metadata) == []


def test_the_drift_check_notices_a_difference(engine: Engine) -> None:
    import facemint.orm

    changed = MetaData(naming_convention=facemint.orm.Base.metadata.naming_convention)
    for table in facemint.orm.Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["users"].append_column(Column("nickname", Text))
    diffs = _drift(engine, changed)
    assert [d[0] for d in diffs if isinstance(d, tuple)] == ["add_column"], diffs


# --- errors and transactions ----------------------------------------------------------------------------


def test_http_exception_is_not_used_below_the_error_handlers() -> None:
    """Errors are FacemintError / BillingError (rendered as problem details by errors.py), never HTTPException."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _python_files(FACEMINT)
        if path.name != "problems.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "HTTPException" in line
    ]
    assert offenders == []


def _service_modules() -> list[Path]:
    return sorted({*ROOT.joinpath("billing").rglob("service.py"), *FACEMINT.rglob("service.py")})


def test_services_never_commit() -> None:
    """The request (or job, or CLI command) boundary commits; a service that commits would make a later
    failure in the same request half-applied."""
    services = _service_modules()
    names = {str(p.relative_to(ROOT)) for p in services}
    assert {
        "billing/ledger/service.py",
        "billing/recharge/service.py",
        "platform/facemint/recharges/service.py",
    } <= names
    offenders = []
    for path in services:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "commit":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# --- tenancy -----------------------------------------------------------------------------------------------


def _is_tenant_word(word: str) -> bool:
    return "tenant" in word and ("id" in word or "scope" in word)


def _mentions_tenant(node: ast.AST) -> bool:
    """Whether an expression names a tenant id: `tenant_id`, `user.tenant_id`, `principal.tenant_scope`,
    `row["tenant_id"]`, `tenant.id`."""
    if isinstance(node, ast.Name):
        return _is_tenant_word(node.id)
    if isinstance(node, ast.Attribute):
        return _is_tenant_word(node.attr) or (
            node.attr == "id" and isinstance(node.value, ast.Name) and node.value.id == "tenant"
        )
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return isinstance(node.slice.value, str) and _is_tenant_word(node.slice.value)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_mentions_tenant(element) for element in node.elts)
    return False


def _is_orm_column(node: ast.AST) -> bool:
    """`User.tenant_id`: a SQL expression being built (a query's join or filter), not a decision in Python."""
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id[:1].isupper()


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def hand_written_tenant_comparisons(source: str, filename: str) -> list[str]:
    """Comparisons of a tenant id with anything but None (`is None` checks say whether there is a tenant, not
    whose): the decisions `facemint.tenancy` makes, written again by hand."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        if not any(_mentions_tenant(operand) for operand in operands) or any(_is_orm_column(o) for o in operands):
            continue
        if all(isinstance(op, ast.Is | ast.IsNot) for op in node.ops) and any(_is_none(o) for o in operands):
            continue
        found.append(f"{filename}:{node.lineno}")
    return found


def test_tenant_visibility_is_decided_only_in_the_tenancy_module() -> None:
    offenders = [
        offence
        for path in _python_files(FACEMINT)
        if path.name != "tenancy.py"
        for offence in hand_written_tenant_comparisons(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert offenders == []


def test_the_tenancy_scan_sees_hand_written_comparisons() -> None:
    source = "\n".join(
        (
            "if user.tenant_id != tenant_scope: pass",
            "if tenant_id not in (None, principal.tenant_id): pass",
            "ok = row['tenant_id'] == scope",
            "same = tenant.id == other",
            "if principal.tenant_id is None: pass",  # whether there is a tenant: fine
            "if count == 3: pass",
        )
    )
    assert [line.split(":")[1] for line in hand_written_tenant_comparisons(source, "probe.py")] == ["1", "2", "3", "4"]


# --- the documentation says what exists --------------------------------------------------------------------

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"^(?:\.?/)?(?:[\w.-]+/)+[\w.-]*$|^[\w.-]+\.(?:py|md|toml|ini|yml|yaml|sh|html|cfg)$")
_MODULE = re.compile(r"^(?:facemint|billing|inference)(?:\.[a-z_][a-z0-9_]*)+$")


_NOT_A_PATH = re.compile(r"^(?:/|\.\.\.|\d+/|(?:application|text|multipart|image|video|audio)/)")
# What the project writes at run time, named by the documents before it exists.
GENERATED = (".facemint", "bench/out/", "trt-cache/", ".venv")


def _named_in_docs() -> Iterator[tuple[str, str]]:
    """(document, name) for every file path or module a document names in backticks (routes, MIME types and
    rates look like paths: they are left out)."""
    for document in DOCUMENTS:
        for span in _CODE_SPAN.findall(document.read_text()):
            name = span.strip().rstrip(".,:;")
            if " " in name or "*" in name or "<" in name or "{" in name or _NOT_A_PATH.match(name):
                continue
            if _PATH.match(name) or _MODULE.match(name):
                yield document.name, name


def _project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [*listed, *{str(Path(f).parent) + "/" for f in listed}]


def _exists(name: str, files: list[str]) -> bool:
    if _MODULE.match(name):
        parts = name.split(".")
        base = FACEMINT.parent if parts[0] == "facemint" else ROOT
        for end in range(len(parts), 0, -1):  # a module, or an attribute of one (`facemint.db.unit_of_work`)
            candidate = base.joinpath(*parts[:end])
            if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
                return True
        return False
    path = name.removeprefix("./")
    if path.startswith(GENERATED):
        return True
    # A path from the repository root, or a path the document gives relative to a package (`finance/logs.py`).
    candidates = {path, path.rstrip("/") + "/"}  # a file, or a folder (listed with a trailing slash)
    return any(f in candidates or any(f.endswith("/" + c) for c in candidates) for f in files)


def test_every_file_and_module_the_documents_name_exists() -> None:
    named = list(_named_in_docs())
    assert len(named) > 50  # the scan sees the documents' names
    files = _project_files()
    missing = sorted({f"{document}: {name}" for document, name in named if not _exists(name, files)})
    assert missing == []


def test_the_readme_roles_table_lists_what_each_role_holds() -> None:
    from facemint.auth.scopes import ROLE_SCOPES, Scope
    from facemint.users.orm import Role

    table: dict[str, set[str]] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        row = re.match(r"^\| `(finance|tenant_admin|member)` \| (.*) \|$", line)
        if row:
            table[row.group(1)] = set(re.findall(r"`([a-z-]+:[a-z-]+)`", row.group(2)))
    v1 = {scope.value for scope in ROLE_SCOPES[Role.member]}
    for role in (Role.finance, Role.tenant_admin, Role.member):
        listed = table[role.value] | (v1 if role is Role.tenant_admin else set())
        assert listed == {scope.value for scope in ROLE_SCOPES[role]}, role
    assert all(Scope(value) for value in set().union(*table.values()))


def test_the_database_roles_table_lists_every_table_with_its_privileges() -> None:
    from facemint.migrate import TABLE_PRIVILEGES

    text = (ROOT / "docs" / "architecture.md").read_text()
    listed: dict[str, str] = {}
    for row in re.finditer(r"^\| (journal|state|read only|owner only) \| (.*?) \| (.*?) \|$", text, re.M):
        for table in re.findall(r"`([a-z_]+)`", row.group(2)):
            listed[table] = row.group(1)
    classes = {("SELECT", "INSERT"): "journal", ("SELECT", "INSERT", "UPDATE"): "state", ("SELECT",): "read only"}
    assert listed == {
        table: classes.get(tuple(privileges), "owner only") for table, privileges in TABLE_PRIVILEGES.items()
    }
