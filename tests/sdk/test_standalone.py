"""The SDK is its own distribution: it imports nothing but the standard library, httpx and itself (never the
service, billing or the engine), declares httpx as its only dependency, ships its type marker, and reads the
responses of a newer server that adds members."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import facemint_client
from facemint_client._convert import from_json
from facemint_client.admin_models import Tenant
from facemint_client.models import Job

DISTRIBUTION = Path(__file__).resolve().parents[2] / "platform" / "facemint-client"
PACKAGE = DISTRIBUTION / "facemint_client"


def _top_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_it_imports_only_the_standard_library_httpx_and_itself() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    imported = set().union(*(_top_level_imports(path) for path in files))
    assert imported - sys.stdlib_module_names == {"httpx", "facemint_client"}


def test_the_distribution_declares_httpx_only_and_ships_its_type_marker() -> None:
    project = tomllib.loads((DISTRIBUTION / "pyproject.toml").read_text())["project"]
    assert project["name"] == "facemint-client"
    assert [dependency.split(">")[0] for dependency in project["dependencies"]] == ["httpx"]
    assert (PACKAGE / "py.typed").is_file()
    assert Path(facemint_client.__file__).resolve().parent == PACKAGE


def test_members_a_newer_server_adds_are_ignored_and_nested_models_built() -> None:
    tenant = from_json(
        Tenant,
        {
            "id": 1,
            "name": "a",
            "status": "active",
            "plan": "pro",
            "created_at": "2026-12-05T10:00:00Z",
            "updated_at": "2026-12-05T10:00:00+00:00",
            "region": "eu",  # not known to this client
        },
    )
    assert tenant.plan == "pro"
    assert tenant.created_at.utcoffset() is not None
    job = from_json(
        Job,
        {
            "id": "job_1",
            "operation": "swap.image",
            "status": "failed",
            "error": {"code": "no_source_face", "detail": None},
            "price_lines": [{"operation": "swap.image", "version": 1, "tokens_per_unit": 1}],
            "created_at": "2026-12-05T10:00:00Z",
        },
    )
    assert job.error is not None
    assert job.error.code == "no_source_face"
    assert job.price_lines[0].tokens_per_unit == 1
    assert job.finished
    assert job.media is None  # absent here: left at None
