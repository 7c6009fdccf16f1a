"""Defects found in review of the metered jobs: each test failed before its fix."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint import storage as storage_module
from facemint.jobs import endpoints as job_endpoints
from facemint.jobs import queries as job_queries
from facemint.storage import LocalStorage
from facemint.webhooks import service as webhook_service
from tests.jobs.conftest import Payer, balance, counts, hold_row, job_row, submit


def accepted(client: TestClient, payer: Payer, **kwargs: Any) -> str:
    response = submit(client, payer, **kwargs)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_the_webhook_url_is_resolved_off_the_event_loop(
    job_client: TestClient, make_payer: Callable[..., Payer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolving the webhook host is blocking DNS (seconds for a slow or unresolvable name): done on the event
    loop, one caller's submit stalls every request of the API process."""
    payer = make_payer(5)
    original = webhook_service.validate_webhook_url
    on_event_loop: list[bool] = []

    def spy(url: str, **kwargs: Any) -> str:
        try:
            asyncio.get_running_loop()
            on_event_loop.append(True)
        except RuntimeError:
            on_event_loop.append(False)
        return original(url, **kwargs)

    monkeypatch.setattr(webhook_service, "validate_webhook_url", spy)
    accepted(job_client, payer, data={"webhook_url": "http://127.0.0.1:9/hook"})
    assert on_event_loop == [False]


def test_a_committed_cancel_is_answered_even_when_redis_is_down(
    job_app: FastAPI, make_payer: Callable[..., Payer], engine: DbEngine
) -> None:
    """The publish that wakes `Prefer: wait` callers runs after the cancel committed: a Redis failure there must
    not turn the canceled (and released) job into a 500 that says nothing was applied."""
    payer = make_payer(5)
    with TestClient(job_app) as client:
        job_id = accepted(client, payer)
        working = job_app.state.redis
        job_app.state.redis = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=1, socket_connect_timeout=1)
        try:
            response = client.post(f"/v1/jobs/{job_id}/cancel", headers=payer.headers)
        finally:
            job_app.state.redis = working
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"
    row = job_row(engine, job_id)
    assert row.status == "canceled"
    assert hold_row(engine, row.hold_id).status == "released"
    assert balance(engine, payer.account_id) == (5, 0)


def test_prefer_wait_with_redis_gone_after_the_commit_answers_the_recorded_job(
    job_app: FastAPI, make_payer: Callable[..., Payer], engine: DbEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing between the ping and the enqueue leaves the job recorded and held for the dispatcher (202,
    as without `Prefer: wait`); the wait must not then fail the request with a 500 for a job that exists."""
    payer = make_payer(5)

    def refuse(*_: Any, **__: Any) -> Any:
        raise RedisConnectionError("Redis went away after the commit")

    with TestClient(job_app) as client:
        monkeypatch.setattr(job_endpoints.queue, "enqueue", refuse)
        monkeypatch.setattr(job_app.state.redis, "pubsub", refuse)
        response = submit(client, payer, headers={"Prefer": "wait=2"})
        monkeypatch.undo()
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    assert response.headers["X-Tokens-Held"] == "1"
    row = job_row(engine, job_id)
    assert (row.status, row.dispatched_at) == ("queued", None)


@pytest.mark.parametrize("zone", ["Etc/GMT-14", "Etc/GMT+12"])
def test_usage_days_are_utc_whatever_the_database_time_zone(
    zone: str,
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    engine: DbEngine,
) -> None:
    """Usage groups by UTC day; the `start`..`end` range must be UTC days too, not the server's local days
    (for any finish time, one of +14 and -12 puts the job on another local day)."""
    payer = make_payer(5)
    job_id = accepted(job_client, payer)
    drain()
    row = job_row(engine, job_id)
    assert row.status == "succeeded"
    day = row.finished_at.astimezone(UTC).date()
    with Session(engine) as session:
        session.execute(text(f"SET TIME ZONE '{zone}'"))
        rows = job_queries.usage(session, user_id=payer.user_id, start=day, end=day)
        session.rollback()
    assert [(r.day, r.jobs, r.tokens) for r in rows] == [(day, 1, 1)]


def test_a_durable_put_also_syncs_the_directory_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result is charged for once `put` returns: the rename that publishes it must reach the disk too (fsync of
    the directory), or a power loss can leave a charged job whose result never existed."""
    synced: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(storage_module.os, "fsync", spy)
    LocalStorage(tmp_path).put("results/job_x-a1.png", b"image")
    assert synced[-1] is True  # the directory, after the file
    synced.clear()
    LocalStorage(tmp_path).put("inputs/job_x/source", b"image", durable=False)
    assert synced == []


def test_one_sweep_settles_a_backlog_larger_than_a_batch(
    job_client: Any, make_payer: Any, engine: Any, sweep: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound on held tokens says: released by the deadline plus one sweep. With more jobs past their deadline
    than one batch, the sweep goes on batch after batch."""
    from facemint.worker import sweeper

    monkeypatch.setattr(sweeper, "BATCH", 2)
    payer = make_payer(7)
    ids = [submit(job_client, payer).json()["id"] for _ in range(7)]
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET deadline_at = now() - interval '1 second'"))
    report = sweep()
    assert sorted(report.failed) == sorted(ids)
    assert balance(engine, payer.account_id) == (7, 0)


def test_workers_seal_the_ledger_a_job_writes(job_client: Any, make_payer: Any, engine: Any, start_worker: Any) -> None:
    """The sealer runs in every worker: the capture a job posts ends up sealed, and the seal verifies."""
    from billing.sealing import service as sealing
    from tests.jobs.conftest import wait_for, wait_terminal

    payer = make_payer(3)
    public_id = submit(job_client, payer).json()["id"]
    start_worker(FACEMINT_SEAL_INTERVAL_SECONDS="0.2")
    assert wait_terminal(engine, public_id).status == "succeeded"
    with engine.connect() as conn:
        newest_entry = conn.execute(text("SELECT max(id) FROM ledger_entries")).scalar_one()

    def sealed_through() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT coalesce(max(last_id), 0) FROM ledger_seals WHERE stream = 'ledger_entries'")
                ).scalar_one()
            )

    wait_for(lambda: sealed_through() >= newest_entry, timeout=20)
    with Session(engine) as session:
        report = sealing.verify(session)
    assert report.intact, report


def test_a_webhook_host_that_never_resolves_is_refused_in_bounded_time(
    job_client: TestClient, make_payer: Callable[..., Payer], monkeypatch: pytest.MonkeyPatch, engine: DbEngine
) -> None:
    """A name server that never answers costs the submit at most the lookup budget (422), not a thread for as long
    as getaddrinfo hangs."""
    from facemint.webhooks.urls import DeadlineResolver

    payer = make_payer(5)
    release = threading.Event()

    def hanging(*_: Any, **__: Any) -> Any:
        release.wait(30)
        raise OSError("gave up")

    monkeypatch.setattr(job_endpoints, "_lookups", DeadlineResolver(hanging, max_pending=4, max_pending_per_key=2))
    monkeypatch.setattr(job_endpoints, "WEBHOOK_LOOKUP_SECONDS", 0.5)
    started = time.monotonic()
    response = submit(job_client, payer, data={"webhook_url": "http://hangs.example.test/hook"})
    took = time.monotonic() - started
    release.set()
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_webhook_url"
    assert took < 5, took
    assert counts(engine, payer.user_id) == (0, 0)
