"""Files never outlive their job: a result stored by a worker killed before it settled, a delete the storage
refused, and inputs whose job was never recorded are all removed, and only the settled result is kept."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine as DbEngine

from facemint.config import Settings
from facemint.storage import LocalStorage, make_storage
from tests.jobs.conftest import Payer, job_row, wait_for, wait_terminal
from tests.jobs.test_crashes import STARTUP_SLACK_SECONDS, accepted, assert_captured_once, assert_reconciles, kill

pytestmark = pytest.mark.slow


def stored(settings: Settings, folder: str) -> list[str]:
    storage = make_storage(settings)
    return sorted(item.key for item in storage.list(folder))


def test_a_result_stored_by_a_worker_killed_before_settling_is_removed(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    start_worker: Callable[..., Any],
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    payer = make_payer(5)
    first = start_worker(FACEMINT_DEBUG_PAUSE_BEFORE_SETTLE_SECONDS="60")
    job_id = accepted(job_client, payer)
    orphan = f"results/{job_id}-a1.png"
    # The engine ran and the result is on disk; the worker now waits before settling: kill it there.
    wait_for(lambda: orphan in stored(job_settings, "results"), timeout=60 + STARTUP_SLACK_SECONDS)
    kill(first)
    assert job_row(engine, job_id).status == "running"

    start_worker()
    done = wait_terminal(engine, job_id, timeout=60)
    assert_captured_once(engine, done)
    assert done.attempts == 2
    # The second attempt's result is kept; the first attempt's is gone, with the inputs.
    wait_for(lambda: stored(job_settings, "results") == [done.result_location], timeout=30)
    assert done.result_location == f"results/{job_id}-a2.png"
    wait_for(lambda: stored(job_settings, "inputs") == [], timeout=30)
    assert_reconciles(job_settings)


class RefusingStorage(LocalStorage):
    """The real local storage, refusing deletes while `refuse` is set (a full disk, a permissions slip)."""

    refuse = True

    def delete(self, key: str) -> None:
        if self.refuse:
            raise PermissionError(f"refused to delete {key}")
        super().delete(key)

    def delete_prefix(self, prefix: str) -> None:
        if self.refuse:
            raise PermissionError(f"refused to delete {prefix}")
        super().delete_prefix(prefix)


def test_a_delete_the_storage_refused_is_retried_by_the_sweeper(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    sweep: Callable[..., Any],
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    payer = make_payer(5)
    job_id = accepted(job_client, payer)
    drain()
    done = wait_terminal(engine, job_id)
    assert stored(job_settings, "results") == [done.result_location]

    refusing = RefusingStorage(job_settings.resolved_storage_dir)
    job_client.app.state.storage = refusing  # type: ignore[attr-defined]
    deleted = job_client.delete(f"/v1/jobs/{job_id}", headers=payer.headers)
    assert deleted.status_code == 200, deleted.text
    assert job_client.get(f"/v1/jobs/{job_id}/result", headers=payer.headers).status_code == 410
    assert stored(job_settings, "results") == [done.result_location]  # the after-commit delete failed
    row = job_row(engine, job_id)
    assert row.files_deleted_at is not None
    assert row.result_purged_at is None

    sweep()  # the storage works again: the sweeper purges and only then marks it
    assert stored(job_settings, "results") == []
    assert job_row(engine, job_id).result_purged_at is not None


def test_files_no_job_accounts_for_are_removed_once_old(
    sweep: Callable[..., Any],
    job_settings: Settings,
    make_payer: Callable[..., Payer],
    job_client: TestClient,
    engine: DbEngine,
) -> None:
    storage = make_storage(job_settings)
    # Inputs of a submit whose commit failed (no job), and a result under a job id nobody knows.
    storage.put("inputs/job_0123456789abcdef01234567/source", b"old", durable=False)
    storage.put("results/job_0123456789abcdef01234567-a1.png", b"old")
    storage.put("inputs/job_ffffffffffffffffffffffff/source", b"new", durable=False)
    payer = make_payer(5)
    live = accepted(job_client, payer)  # queued: its inputs are needed
    old = time.time() - 2 * job_settings.orphan_file_grace_seconds
    root = job_settings.resolved_storage_dir
    for key in (
        "inputs/job_0123456789abcdef01234567/source",
        "results/job_0123456789abcdef01234567-a1.png",
        f"inputs/{live}/source",
        f"inputs/{live}/target",
    ):
        os.utime(root / key, (old, old))

    report = sweep(job_settings.model_copy(update={"orphan_sweep_interval_seconds": 0.001}))
    assert report.orphans_deleted == 2
    assert stored(job_settings, "results") == []
    assert stored(job_settings, "inputs") == sorted(
        ["inputs/job_ffffffffffffffffffffffff/source", f"inputs/{live}/source", f"inputs/{live}/target"]
    )
    assert job_row(engine, live).status == "queued"
