"""`facemint ledger seal | verify | digest`, run in-process with click's CliRunner against the test database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from facemint.cli.main import cli
from facemint.config import Settings, get_settings
from tests.factories import create_user, fund


@pytest.fixture
def cli_env(settings: Settings) -> Iterator[dict[str, str | None]]:
    assert settings.jwt_secret is not None
    assert settings.api_key_pepper is not None
    yield {
        "FACEMINT_ENV": "dev",
        "FACEMINT_DATABASE_URL": settings.database_url,
        "FACEMINT_REDIS_URL": settings.redis_url,
        "FACEMINT_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "FACEMINT_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value(),
    }
    get_settings.cache_clear()  # the CLI cached settings read from this environment


def invoke(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(cli, ["ledger", *args], env=env, catch_exceptions=False)


def _fund_some(session: Session, n: int) -> list[int]:
    accounts = []
    for _ in range(n):
        user = create_user(session)
        fund(session, account_id=user.account_id, amount=10)
        accounts.append(user.account_id)
    return accounts


def test_seal_until_caught_up_then_nothing_new(cli_env: dict[str, str | None], session: Session) -> None:
    _fund_some(session, 3)
    result = invoke(cli_env, "seal", "--max-rows", "4")
    assert result.exit_code == 0, result.output
    assert "ledger_entries: sealed 6 row(s) in 2 batch(es), seals 1..2, head " in result.output
    assert session.execute(text("SELECT count(*) FROM ledger_seals WHERE stream = 'ledger_entries'")).scalar() == 2
    again = invoke(cli_env, "seal")
    assert again.exit_code == 0, again.output
    assert "ledger_entries: nothing new to seal" in again.output
    assert "audit_events: nothing new to seal" in again.output


def test_verify_passes_on_intact_books(cli_env: dict[str, str | None], session: Session) -> None:
    _fund_some(session, 2)
    assert invoke(cli_env, "seal").exit_code == 0
    result = invoke(cli_env, "verify")
    assert result.exit_code == 0, result.output
    assert "ledger_entries: 1 seal(s), 4 sealed row(s) checked" in result.output
    assert "the sealed books are intact" in result.output
    as_json = invoke(cli_env, "verify", "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.output)["intact"] is True


@pytest.mark.no_invariants
def test_verify_lists_changed_rows_and_exits_1(
    cli_env: dict[str, str | None], session: Session, owner_engine: Engine
) -> None:
    _fund_some(session, 3)
    assert invoke(cli_env, "seal").exit_code == 0
    with owner_engine.begin() as owner:
        owner.execute(text("SET LOCAL session_replication_role = replica"))
        owner.execute(text("UPDATE ledger_entries SET amount = 999 WHERE id = 2"))
        owner.execute(text("DELETE FROM ledger_entries WHERE id = 5"))
        owner.execute(text("UPDATE ledger_seals SET prev_hash = sha256('x') WHERE stream = 'audit_events' AND seq = 1"))
    result = invoke(cli_env, "verify")
    assert result.exit_code == 1, result.output
    assert "MODIFIED ledger_entries: 1 row(s), ids 2" in result.output
    assert "DELETED ledger_entries: 1 row(s), ids 5" in result.output
    assert "BROKEN audit_events seal 1: prev_hash does not match the previous seal's hash" in result.output
    assert "NOT INTACT: 2 changed row(s), 2 broken seal check(s)" in result.output
    report = json.loads(invoke(cli_env, "verify", "--json").output)
    assert report["intact"] is False
    assert report["changes"]["ledger_entries"] == {"modified": [2], "deleted": [5]}


@pytest.mark.no_invariants
def test_digest_exports_and_anchors_verify(
    cli_env: dict[str, str | None], session: Session, owner_engine: Engine, tmp_path: Path
) -> None:
    empty = invoke(cli_env, "digest")
    assert empty.exit_code == 0
    assert "nothing sealed yet" in empty.stderr
    _fund_some(session, 2)
    assert invoke(cli_env, "seal").exit_code == 0
    target = tmp_path / "digest.json"
    result = invoke(cli_env, "digest", "-o", str(target))
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text())
    stored = session.execute(text("SELECT hash FROM ledger_seals WHERE stream = 'ledger_entries'")).scalar_one()
    assert document["streams"]["ledger_entries"]["hash"] == bytes(stored).hex()
    printed = json.loads(invoke(cli_env, "digest").output)
    assert printed["streams"] == document["streams"]
    assert invoke(cli_env, "verify", "--anchor", str(target)).exit_code == 0
    # Rewrite a row and reseal everything: the chain is consistent again, but the kept digest disagrees.
    session.commit()
    with owner_engine.begin() as owner:
        owner.execute(text("SET LOCAL session_replication_role = replica"))
        owner.execute(text("UPDATE ledger_entries SET reference = 'forged' WHERE id = 1"))
        owner.execute(text("DELETE FROM ledger_seal_leaves"))
        owner.execute(text("DELETE FROM ledger_seals"))
    assert invoke(cli_env, "seal").exit_code == 0
    assert invoke(cli_env, "verify").exit_code == 0
    anchored = invoke(cli_env, "verify", "--anchor", str(target))
    assert anchored.exit_code == 1
    assert "BROKEN ledger_entries seal 1: hash differs from the anchored digest" in anchored.output


def test_verify_refuses_a_file_that_is_not_a_digest(cli_env: dict[str, str | None], tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"streams": {}}')
    result = invoke(cli_env, "verify", "--anchor", str(bogus))
    assert result.exit_code == 2
    assert "is not a digest" in result.stderr
