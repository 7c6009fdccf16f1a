"""The OpenAPI document is the contract: schemathesis, run against the live app with every check (status codes,
content types, headers and response schemas conform; invalid data is refused and valid data accepted; missing
auth is refused; stateful links), finds nothing. Bounded in CI; `FACEMINT_FUZZ_EXAMPLES` raises the examples per
operation and `FACEMINT_FUZZ_SECONDS` gives the whole run a time budget instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from facemint.app import create_app
from facemint.config import Settings
from facemint.users.orm import Role
from tests.conftest import make_settings
from tests.factories import create_tenant, create_user, fund, issue_key
from tests.jobs.conftest import serving

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FACEMINT_FUZZ_EXAMPLES", "8"))
SECONDS = os.environ.get("FACEMINT_FUZZ_SECONDS")
SEED = os.environ.get("FACEMINT_FUZZ_SEED", "20261205")
UNLIMITED = "1000000/minute"


@pytest.fixture
def fuzzed_settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path / "data",
        # Rate limits raised for the run: the fuzzer sends thousands of requests from one address.
        plan_limits={
            plan: {"key": UNLIMITED, "tenant": UNLIMITED} for plan in ("free", "pro", "enterprise", "platform")
        },
        login_limit_per_ip=UNLIMITED,
        login_limit_per_account=UNLIMITED,
        anonymous_limit_per_ip=UNLIMITED,
        webhook_allowed_networks=["127.0.0.0/8"],
    )


@pytest.fixture
def fuzzed_server(fuzzed_settings: Settings) -> Iterator[str]:
    with serving(create_app(fuzzed_settings)) as url:
        yield url


def _wfc_auth(path: Path, tokens: dict[str, str]) -> Path:
    """Web Fuzzing Commons auth: one entry per user, so schemathesis can check each user's objects against the
    others (object-level authorization)."""
    path.write_text(
        json.dumps(
            {
                "auth": [
                    {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}
                    for name, token in tokens.items()
                ]
            }
        )
    )
    return path


def test_schemathesis_finds_nothing(
    fuzzed_server: str, session: Session, fuzzed_settings: Settings, tmp_path: Path
) -> None:
    admin = create_user(session, role=Role.platform_admin)
    tenant = create_tenant(session)
    member = create_user(session, tenant=tenant)
    fund(session, account_id=member.account_id, amount=1_000)
    other = create_user(session, tenant=create_tenant(session))
    tokens = {
        "admin": issue_key(session, fuzzed_settings, admin),
        "member": issue_key(session, fuzzed_settings, member),
        "other-tenant-member": issue_key(session, fuzzed_settings, other),
    }
    reports = tmp_path / "reports"
    auth = _wfc_auth(tmp_path / "auth.json", tokens)
    # Revoking an API key may hit the fuzzer's own key, after which every request is 401: that operation runs in a
    # second pass of its own, after everything else.
    summaries = [
        _run_schemathesis(fuzzed_server, auth, reports, "--exclude-operation-id", SELF_REVOKING),
        _run_schemathesis(fuzzed_server, auth, reports, "--include-operation-id", SELF_REVOKING),
    ]
    print("\n[schemathesis]\n" + "\n".join(summaries))  # noqa: T201  (the figures for docs/security.md, with -s)


SELF_REVOKING = "revoke_api_key_admin_v1_api_keys__key_id__delete"


def _run_schemathesis(url: str, auth: Path, reports: Path, *selection: str) -> str:
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--workers",
        "1",
        "--seed",
        SEED,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--auth-wfc",
        str(auth),
        # The admin reaches every route; the other identities are its peers for object-level authorization.
        "--auth-wfc-user",
        "admin",
        "--report",
        "ndjson",
        "--report-dir",
        str(reports),
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--no-color",
        *selection,
        *(["--max-time", SECONDS] if SECONDS else ["--max-examples", str(EXAMPLES)]),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-4000:]
    return result.stdout[result.stdout.rfind("SUMMARY") :] if "SUMMARY" in result.stdout else result.stdout[-3000:]
