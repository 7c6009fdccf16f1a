"""Crashes with real `facemint worker` processes, real Redis and real Postgres: a worker killed with SIGKILL in
the middle of a job, a job out of attempts, a lost queue entry, Redis down at submit, a job recorded but never
queued, Postgres restarted (or every connection cut) mid-job, and a job that can never run past its deadline.
Each ends with the job settled exactly once (one capture or one release), and the after-test check runs the
same reconciliation as `facemint reconcile`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine

from facemint.app import create_app
from facemint.config import Settings
from facemint.jobs import endpoints as job_endpoints
from tests.jobs.conftest import (
    ROOT,
    Payer,
    PostgresControl,
    balance,
    capture_count,
    counts,
    execute,
    hold_row,
    job_row,
    problem,
    submit,
    wait_for,
    wait_running,
    wait_terminal,
    worker_env,
)

pytestmark = pytest.mark.slow

# Room for a worker process to start and load the demo engine, on a loaded machine.
STARTUP_SLACK_SECONDS = 8.0


def accepted(client: TestClient, payer: Payer, **kwargs: Any) -> str:
    response = submit(client, payer, **kwargs)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def kill(process: subprocess.Popen[bytes]) -> float:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    return time.monotonic()


def assert_reconciles(settings: Settings) -> None:
    """`facemint reconcile` (the CLI, as an operator runs it) says the books balance, jobs and holds included."""
    result = subprocess.run(
        [sys.executable, "-m", "facemint.cli.main", "reconcile", "--json"],
        env=worker_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    assert report["discrepancies"] == []
    assert "job_capture_count" in report["checks"]


def assert_captured_once(engine: DbEngine, job: Any, tokens: int = 1) -> None:
    assert job.status == "succeeded", (job.status, job.error_code, job.error_detail)
    assert job.tokens_captured == tokens
    hold = hold_row(engine, job.hold_id)
    assert (hold.status, hold.captured_amount) == ("captured", tokens)
    assert capture_count(engine, job.hold_id) == 1


def assert_released(engine: DbEngine, job: Any, code: str) -> None:
    assert job.status == "failed", (job.status, job.error_code)
    assert job.error_code == code
    assert job.tokens_captured is None
    assert hold_row(engine, job.hold_id).status == "released"
    assert capture_count(engine, job.hold_id) == 0


def report(name: str, seconds: float, bound: float) -> None:
    print(f"\n[timing] {name}: {seconds:.2f}s (bound {bound:.2f}s)")  # noqa: T201


class TestWorkerKilled:
    def test_sigkill_mid_job_reruns_and_captures_once(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        first = start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="3")
        job_id = accepted(job_client, payer)
        running = wait_running(engine, job_id, timeout=60)
        assert running.worker_id.endswith(f":{first.pid}")
        assert running.attempts == 1
        killed_at = kill(first)
        assert job_row(engine, job_id).status == "running"  # nobody knows yet
        assert balance(engine, payer.account_id) == (5, 1)

        second = start_worker()
        done = wait_terminal(engine, job_id, timeout=60)
        settled = time.monotonic() - killed_at
        assert_captured_once(engine, done)
        assert done.attempts == 2
        assert done.worker_id.endswith(f":{second.pid}")
        assert done.result_location.endswith("-a2.png")
        assert balance(engine, payer.account_id) == (4, 0)
        bound = job_settings.job_stale_after_seconds + job_settings.sweep_interval_seconds + STARTUP_SLACK_SECONDS
        report("sigkill -> succeeded (second worker)", settled, bound)
        assert settled < bound
        assert_reconciles(job_settings)
        result = job_client.get(f"/v1/jobs/{job_id}/result", headers=payer.headers)
        assert result.status_code == 200
        assert result.content.startswith(b"\x89PNG")

    def test_sigkill_with_a_worker_already_waiting(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        """Two warm workers: the survivor's sweeper takes the job back and it runs again; the bound is the stale
        time plus a sweep plus the run, with no start-up in it."""
        payer = make_payer(5)
        workers = [start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="3") for _ in range(2)]
        warm_up = accepted(job_client, payer)  # both engines loaded before the measured job
        wait_running(engine, warm_up, timeout=60)
        wait_terminal(engine, warm_up, timeout=60)
        job_id = accepted(job_client, payer)
        running = wait_running(engine, job_id, timeout=30)
        victim = next(w for w in workers if running.worker_id.endswith(f":{w.pid}"))
        survivor = next(w for w in workers if w is not victim)
        killed_at = kill(victim)
        done = wait_terminal(engine, job_id, timeout=30)
        settled = time.monotonic() - killed_at
        assert_captured_once(engine, done)
        assert done.attempts == 2
        assert done.worker_id.endswith(f":{survivor.pid}")
        run_time = 3.0 + 1.0  # the debug pause plus the demo engine
        bound = job_settings.job_stale_after_seconds + job_settings.sweep_interval_seconds + run_time
        report("sigkill -> succeeded (warm survivor)", settled, bound)
        assert settled < bound + 2.0  # + the redispatch and claim, on a loaded machine
        assert balance(engine, payer.account_id) == (3, 0)

    def test_out_of_attempts_fails_worker_lost_and_releases(
        self,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        settings = job_settings.model_copy(update={"job_max_attempts": 1})
        env = {"FACEMINT_JOB_MAX_ATTEMPTS": "1"}
        with TestClient(create_app(settings)) as client:
            first = start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="3", **env)
            job_id = accepted(client, payer)
            assert job_row(engine, job_id).max_attempts == 1
            wait_running(engine, job_id, timeout=60)
            killed_at = kill(first)
            start_worker(**env)
            done = wait_terminal(engine, job_id, timeout=60)
        settled = time.monotonic() - killed_at
        assert_released(engine, done, "worker_lost")
        assert done.attempts == 1
        assert balance(engine, payer.account_id) == (5, 0)
        bound = job_settings.job_stale_after_seconds + job_settings.sweep_interval_seconds + STARTUP_SLACK_SECONDS
        report("sigkill, no attempts left -> failed", settled, bound)
        assert settled < bound
        assert_reconciles(job_settings)


class TestQueueLost:
    def test_a_lost_queue_entry_is_dispatched_again(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        redis_client: Redis,
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job_id = accepted(job_client, payer)
        submitted = time.monotonic()
        redis_client.flushdb()  # Redis restarted empty: the queue entry is gone
        start_worker()
        done = wait_terminal(engine, job_id, timeout=60)
        elapsed = time.monotonic() - submitted
        assert_captured_once(engine, done)
        assert done.attempts == 1
        bound = job_settings.job_redispatch_seconds + job_settings.sweep_interval_seconds + STARTUP_SLACK_SECONDS
        report("lost queue entry -> succeeded", elapsed, bound)
        assert elapsed < bound

    def test_a_job_recorded_but_never_queued_is_dispatched(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        sweep: Callable[..., Any],
        drain: Callable[..., None],
        redis_client: Redis,
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        """As if the process died between commit and enqueue: no queue entry, `dispatched_at` NULL."""
        payer = make_payer(5)
        job_id = accepted(job_client, payer)
        redis_client.delete(f"rq:queue:{job_settings.queue_name}", f"rq:job:{job_id}")
        execute(engine, "UPDATE jobs SET dispatched_at = NULL WHERE public_id = :id", id=job_id)
        drain()  # nothing to run
        assert job_row(engine, job_id).status == "queued"
        # Dispatched only once it is a second old (a submit between its commit and its enqueue is left alone).
        wait_for(lambda: sweep().dispatched == [job_id], timeout=5, interval=0.2)
        assert job_row(engine, job_id).dispatched_at is not None
        assert sweep().dispatched == []  # dispatched once, not on every sweep
        drain()
        assert_captured_once(engine, job_row(engine, job_id))

    def test_enqueue_failing_after_commit_leaves_the_job_for_the_dispatcher(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        sweep: Callable[..., Any],
        drain: Callable[..., None],
        redis_client: Redis,
        engine: DbEngine,
        job_settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        payer = make_payer(5)

        def refuse(*_: Any, **__: Any) -> None:
            raise RedisConnectionError("Redis went away after the commit")

        monkeypatch.setattr(job_endpoints.queue, "enqueue", refuse)
        response = submit(job_client, payer)
        monkeypatch.undo()
        assert response.status_code == 202, response.text  # recorded and held: the dispatcher queues it
        job_id = response.json()["id"]
        row = job_row(engine, job_id)
        assert (row.status, row.dispatched_at) == ("queued", None)
        assert redis_client.llen(f"rq:queue:{job_settings.queue_name}") == 0
        wait_for(lambda: sweep().dispatched == [job_id], timeout=5, interval=0.2)
        drain()
        assert_captured_once(engine, job_row(engine, job_id))
        assert balance(engine, payer.account_id) == (4, 0)


class TestRedisDown:
    def test_submit_is_503_and_records_nothing(
        self, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings
    ) -> None:
        payer = make_payer(5)
        settings = job_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
        with TestClient(create_app(settings)) as client:
            response = submit(client, payer)
        body = problem(response, 503)
        assert int(response.headers["Retry-After"]) >= 1
        assert "Traceback" not in body.get("detail", "")
        assert counts(engine, payer.user_id) == (0, 0)
        assert balance(engine, payer.account_id) == (5, 0)

    def test_queue_down_with_the_limiter_up_is_503_queue_unavailable(
        self, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings
    ) -> None:
        payer = make_payer(5)
        app = create_app(job_settings)
        app.state.redis = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=1, socket_connect_timeout=1)
        with TestClient(app) as client:
            response = submit(client, payer)
        problem(response, 503, "queue_unavailable")
        assert int(response.headers["Retry-After"]) >= 1
        assert counts(engine, payer.user_id) == (0, 0)
        assert balance(engine, payer.account_id) == (5, 0)
        inputs = job_settings.resolved_storage_dir / "inputs"
        assert not inputs.exists() or not any(inputs.rglob("*"))


class TestPostgresOutage:
    def test_postgres_restarted_mid_job_settles_once(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        postgres_control: PostgresControl,
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        worker = start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="3")
        jobs = [accepted(job_client, payer) for _ in range(2)]  # one running, one queued
        wait_running(engine, jobs[0], timeout=60)
        postgres_control.stop("immediate")
        stopped_at = time.monotonic()
        time.sleep(2.0)  # longer than the stale time: the sweeper may take the job back once Postgres returns
        postgres_control.start()
        done = [wait_terminal(engine, job_id, timeout=60) for job_id in jobs]
        settled = time.monotonic() - stopped_at
        for row in done:
            assert_captured_once(engine, row)
        assert worker.poll() is None, "the worker survived the outage"
        assert balance(engine, payer.account_id) == (3, 0)
        report("postgres stopped 2s mid-job -> both settled", settled, 60)
        assert_reconciles(job_settings)

    def test_the_api_answers_503_while_postgres_is_down_and_recovers(
        self, job_client: TestClient, make_payer: Callable[..., Payer], postgres_control: PostgresControl
    ) -> None:
        payer = make_payer(5)
        job_id = accepted(job_client, payer)
        postgres_control.stop("immediate")
        try:
            during = job_client.get(f"/v1/jobs/{job_id}", headers=payer.headers)
            submitted = submit(job_client, payer)
        finally:
            postgres_control.start()
        for response in (during, submitted):
            body = problem(response, 503, "database_unavailable")
            assert "Retry-After" in response.headers
            assert "psycopg2" not in json.dumps(body)
            assert "Traceback" not in json.dumps(body)
        # The same process, its pool recovered (the failed requests' disconnects invalidated it): no restart needed.
        assert job_client.get(f"/v1/jobs/{job_id}", headers=payer.headers).status_code == 200

    def test_every_connection_cut_mid_job_settles_once(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        engine: DbEngine,
        owner_engine: DbEngine,
    ) -> None:
        payer = make_payer(5)
        worker = start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="2")
        job_id = accepted(job_client, payer)
        wait_running(engine, job_id, timeout=60)
        cuts = []
        for _ in range(3):  # the heartbeat and sweeper reconnect between rounds: cut them again
            with owner_engine.connect() as conn:  # as the owner: it may end every session, not only its own role's
                cuts.append(
                    conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE pid <> pg_backend_pid() AND datname = current_database()"
                        )
                    ).scalar_one()
                )
                conn.commit()
            time.sleep(0.5)
        assert all(cut >= 1 for cut in cuts), cuts  # the worker's pooled connections, at least
        engine.dispose()  # the cuts ended this test's own pooled connections too, used a moment ago (no ping)
        done = wait_terminal(engine, job_id, timeout=30)
        assert_captured_once(engine, done)
        assert worker.poll() is None
        assert balance(engine, payer.account_id) == (4, 0)


class TestSweeperRaces:
    def test_a_canceled_job_whose_worker_died_ends_canceled_not_requeued(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        sweep: Callable[..., Any],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        worker = start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="3")
        job_id = accepted(job_client, payer)
        wait_running(engine, job_id, timeout=60)
        kill(worker)
        response = job_client.post(f"/v1/jobs/{job_id}/cancel", headers=payer.headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "running"
        time.sleep(job_settings.job_stale_after_seconds + 0.2)
        assert job_id in sweep().failed
        done = job_row(engine, job_id)
        assert (done.status, done.error_code, done.attempts) == ("canceled", "canceled", 1)
        assert hold_row(engine, done.hold_id).status == "released"
        assert balance(engine, payer.account_id) == (5, 0)
        assert sweep().dispatched == []

    def test_many_sweepers_at_once_settle_each_stale_job_once(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        sweep: Callable[..., Any],
        redis_client: Redis,
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        """Twenty jobs whose workers vanished: ten with attempts left (requeued and queued once each), ten
        without (failed and released once each), swept by four sweepers at the same instant."""
        payer = make_payer(20)
        ids = [accepted(job_client, payer) for _ in range(20)]
        redis_client.flushdb()  # and Redis lost its queue: what is queued again is counted from empty
        execute(
            engine,
            "UPDATE jobs SET status = 'running', attempts = CASE WHEN id % 2 = 0 THEN max_attempts ELSE 1 END, "
            "started_at = now(), heartbeat_at = now() - interval '1 hour', worker_id = 'gone:1', "
            "created_at = now() - interval '1 minute' WHERE public_id = ANY(:ids)",
            ids=ids,
        )
        barrier = threading.Barrier(4)

        def one_sweeper() -> Any:
            barrier.wait(timeout=10)
            return sweep()

        with ThreadPoolExecutor(max_workers=4) as pool:
            reports = list(pool.map(lambda _: one_sweeper(), range(4)))
        requeued = [i for r in reports for i in r.requeued]
        failed = [i for r in reports for i in r.failed]
        dispatched = [i for r in reports for i in r.dispatched]
        assert len(requeued) == len(set(requeued)) == 10
        assert len(failed) == len(set(failed)) == 10
        assert set(requeued) | set(failed) == set(ids)
        assert sorted(dispatched) == sorted(requeued)  # each queued once, by one of the sweepers
        queued = [i.decode() for i in redis_client.lrange(f"rq:queue:{job_settings.queue_name}", 0, -1)]
        assert sorted(queued) == sorted(requeued)
        for job_id in failed:
            row = job_row(engine, job_id)
            assert (row.status, row.error_code) == ("failed", "worker_lost")
            assert hold_row(engine, row.hold_id).status == "released"
        for job_id in requeued:
            row = job_row(engine, job_id)
            assert (row.status, row.error_code) == ("queued", "worker_lost")
            assert hold_row(engine, row.hold_id).status == "held"
        assert balance(engine, payer.account_id) == (20, 10)
        assert_reconciles(job_settings)


class TestDeadline:
    def test_a_job_no_worker_takes_fails_at_its_deadline(
        self,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        settings = job_settings.model_copy(update={"job_deadline_seconds": 10})
        with TestClient(create_app(settings)) as client:
            job_id = accepted(client, payer)
        submitted = time.monotonic()
        # A worker on another queue: it never runs the job, but its sweeper watches every job.
        start_worker(FACEMINT_QUEUE_NAME=f"elsewhere-{os.getpid()}", FACEMINT_JOB_DEADLINE_SECONDS="10")
        done = wait_terminal(engine, job_id, timeout=30)
        elapsed = time.monotonic() - submitted
        assert_released(engine, done, "deadline_exceeded")
        assert done.attempts == 0
        assert balance(engine, payer.account_id) == (5, 0)
        bound = 10 + job_settings.sweep_interval_seconds + 2.0
        report("deadline 10s, never run -> failed", elapsed, bound)
        assert 9.0 <= elapsed < bound

    def test_a_running_job_past_its_deadline_fails_and_is_not_charged(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        start_worker: Callable[..., subprocess.Popen[bytes]],
        sweep: Callable[..., Any],
        engine: DbEngine,
    ) -> None:
        payer = make_payer(5)
        start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="3")
        job_id = accepted(job_client, payer)
        wait_running(engine, job_id, timeout=60)
        execute(engine, "UPDATE jobs SET deadline_at = now() WHERE public_id = :id", id=job_id)
        assert job_id in sweep().failed
        done = wait_terminal(engine, job_id, timeout=5)
        assert_released(engine, done, "deadline_exceeded")
        time.sleep(3.5)  # the worker's run ends: it must not charge or change the job
        after = job_row(engine, job_id)
        assert (after.status, after.error_code, after.finished_at) == ("failed", "deadline_exceeded", done.finished_at)
        assert capture_count(engine, done.hold_id) == 0
        assert balance(engine, payer.account_id) == (5, 0)

    def test_the_sweeper_fails_a_queued_job_past_its_deadline(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        sweep: Callable[..., Any],
        drain: Callable[..., None],
        engine: DbEngine,
    ) -> None:
        payer = make_payer(5)
        job_id = accepted(job_client, payer)
        execute(engine, "UPDATE jobs SET deadline_at = now() - interval '1 second' WHERE public_id = :id", id=job_id)
        first = sweep()
        assert first.failed == [job_id]
        assert sweep().failed == []  # settled once
        drain()  # its queue entry is still there: the claim refuses a job past its deadline
        done = job_row(engine, job_id)
        assert_released(engine, done, "deadline_exceeded")
        assert done.attempts == 0
        assert balance(engine, payer.account_id) == (5, 0)
        assert counts(engine, payer.user_id) == (1, 1)
