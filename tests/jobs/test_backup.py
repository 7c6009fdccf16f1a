"""`facemint backup` / `facemint restore`: a backup of real jobs, books and sealed ledger restored into a fresh
database on the same server with fresh storage; the restored platform reconciles, its seals verify and every
result downloads. Refusals leave the target untouched. (Here, not in tests/platform: it uses the job fixtures.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, pool, text
from sqlalchemy.orm import Session

from billing.sealing import service as sealing
from facemint.app import create_app
from facemint.cli.main import cli
from facemint.config import Settings, get_settings
from facemint.db import sqlalchemy_url
from tests.conftest import with_database
from tests.factories import fund
from tests.jobs.conftest import Payer, face_png, submit


def _env(settings: Settings, *, owner_url: str, data_dir: Path) -> dict[str, str | None]:
    assert settings.jwt_secret is not None
    assert settings.api_key_pepper is not None
    return {
        "FACEMINT_ENV": "dev",
        "FACEMINT_DATABASE_URL": settings.database_url,
        "FACEMINT_DATABASE_OWNER_URL": owner_url,
        "FACEMINT_REDIS_URL": settings.redis_url,
        "FACEMINT_DATA_DIR": str(data_dir),
        "FACEMINT_STORAGE_DIR": None,
        "FACEMINT_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "FACEMINT_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value(),
    }


def _restored_env(settings: Settings, *, owner_url: str, database: str, data_dir: Path) -> dict[str, str | None]:
    """The command environment of a platform restored into `database` (its owner and service URLs) and `data_dir`."""
    restored = settings.model_copy(update={"database_url": with_database(settings.database_url or "", database)})
    return _env(restored, owner_url=with_database(owner_url, database), data_dir=data_dir)


def _invoke(env: dict[str, str | None], *args: str) -> Result:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    finally:
        get_settings.cache_clear()


def _succeeded_jobs(job_client: TestClient, drain: Callable[..., None], payer: Payer, n: int) -> dict[str, bytes]:
    ids = []
    for i in range(n):
        response = submit(job_client, payer, source=face_png(10 + i))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    drain()
    results = {}
    for public_id in ids:
        result = job_client.get(f"/v1/jobs/{public_id}/result", headers=payer.headers)
        assert result.status_code == 200, result.text
        results[public_id] = result.content
    return results


def test_restore_into_fresh_database_reconciles_verifies_and_serves_every_result(
    job_settings: Settings,
    job_client: TestClient,
    drain: Callable[..., None],
    make_payer: Callable[..., Payer],
    session: Session,
    owner_url: str,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    payer = make_payer(tokens=20)
    results = _succeeded_jobs(job_client, drain, payer, 3)
    fund(session, account_id=payer.account_id, amount=5)  # a recharge after the jobs
    assert sealing.seal_all(session, max_rows=1000)
    session.commit()

    backup_dir = tmp_path / "backup"
    env = _env(job_settings, owner_url=owner_url, data_dir=job_settings.data_dir)
    made = _invoke(env, "backup", "--out", str(backup_dir))
    assert made.exit_code == 0, made.output
    metadata = json.loads((backup_dir / "metadata.json").read_text())
    assert metadata["counts"]["jobs"] == 3
    assert metadata["objects"]["with_files"] is True
    manifest_keys = {o["key"] for o in json.loads((backup_dir / "manifest.json").read_text())["objects"]}
    assert all(any(k.startswith(f"results/{public_id}") for k in manifest_keys) for public_id in results)
    again = _invoke(env, "backup", "--out", str(backup_dir))
    assert again.exit_code == 1
    assert "already exists" in again.output

    restored_app = with_database(job_settings.database_url or "", fresh_database)
    restored_settings = job_settings.model_copy(
        update={"database_url": restored_app, "data_dir": tmp_path / "restored"}
    )
    restored_env = _restored_env(
        job_settings, owner_url=owner_url, database=fresh_database, data_dir=tmp_path / "restored"
    )
    restored = _invoke(restored_env, "restore", "--from", str(backup_dir))
    assert restored.exit_code == 0, restored.output
    assert f"{len(manifest_keys)} object(s) restored" in restored.output

    # The service's own role reads the restored books: the grants were given again.
    app_env = {**restored_env, "FACEMINT_DATABASE_OWNER_URL": None}
    reconciled = _invoke(app_env, "reconcile")
    assert reconciled.exit_code == 0, reconciled.output
    assert "the books balance" in reconciled.output
    verified = _invoke(app_env, "ledger", "verify")
    assert verified.exit_code == 0, verified.output
    assert "the sealed books are intact" in verified.output

    with TestClient(create_app(restored_settings)) as client:
        for public_id, content in results.items():
            download = client.get(f"/v1/jobs/{public_id}/result", headers=payer.headers)
            assert download.status_code == 200, download.text
            assert download.content == content


def test_restore_refuses_a_database_that_holds_tables(job_settings: Settings, owner_url: str, tmp_path: Path) -> None:
    env = _env(job_settings, owner_url=owner_url, data_dir=job_settings.data_dir)
    assert _invoke(env, "backup", "--out", str(tmp_path / "backup")).exit_code == 0
    refused = _invoke(env, "restore", "--from", str(tmp_path / "backup"))
    assert refused.exit_code == 1
    assert "restore into an empty database" in refused.output


def test_restore_refuses_an_object_that_does_not_match_the_manifest_and_writes_nothing(
    job_settings: Settings,
    job_client: TestClient,
    drain: Callable[..., None],
    make_payer: Callable[..., Payer],
    owner_url: str,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    payer = make_payer(tokens=5)
    (public_id,) = _succeeded_jobs(job_client, drain, payer, 1)
    env = _env(job_settings, owner_url=owner_url, data_dir=job_settings.data_dir)
    backup_dir = tmp_path / "backup"
    assert _invoke(env, "backup", "--out", str(backup_dir)).exit_code == 0
    (copy,) = (backup_dir / "objects" / "results").glob(f"{public_id}*")
    copy.write_bytes(copy.read_bytes()[:-1] + b"\x00")

    restored_owner = with_database(owner_url, fresh_database)
    restored_dir = tmp_path / "restored"
    restored_env = _restored_env(job_settings, owner_url=owner_url, database=fresh_database, data_dir=restored_dir)
    refused = _invoke(restored_env, "restore", "--from", str(backup_dir))
    assert refused.exit_code == 1
    assert "does not match its size and SHA-256 in the manifest" in refused.output
    engine = create_engine(sqlalchemy_url(restored_owner), poolclass=pool.NullPool)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 0
    engine.dispose()
    assert not list(restored_dir.rglob("*.png"))


def test_restore_of_a_backup_without_files_lists_the_objects_storage_lacks(
    job_settings: Settings,
    job_client: TestClient,
    drain: Callable[..., None],
    make_payer: Callable[..., Payer],
    owner_url: str,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    payer = make_payer(tokens=5)
    (public_id,) = _succeeded_jobs(job_client, drain, payer, 1)
    env = _env(job_settings, owner_url=owner_url, data_dir=job_settings.data_dir)
    backup_dir = tmp_path / "backup"
    made = _invoke(env, "backup", "--out", str(backup_dir), "--without-files")
    assert made.exit_code == 0, made.output
    assert not (backup_dir / "objects").exists()

    restored_env = _restored_env(
        job_settings, owner_url=owner_url, database=fresh_database, data_dir=tmp_path / "restored"
    )
    restored = _invoke(restored_env, "restore", "--from", str(backup_dir))
    assert restored.exit_code == 3, restored.output
    assert "object(s) in the manifest are not in storage" in restored.output
    assert f"results/{public_id}" in restored.output
