"""A real `facemint worker` process reports itself through `GET /metrics`: its heartbeat (counted alive while it
beats, gone once it stops cleanly) and the periodic reconciliation it runs and records."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine

from tests.jobs.conftest import wait_for
from tests.platform.test_metrics import Scrape, parse


def _scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def test_a_worker_heartbeats_reconciles_and_leaves_the_list_when_stopped(
    start_worker: Callable[..., subprocess.Popen[bytes]], job_client: TestClient, engine: DbEngine
) -> None:
    worker = start_worker(FACEMINT_WORKER_HEARTBEAT_SECONDS="0.2")
    wait_for(lambda: _scrape(job_client).value("facemint_workers_alive") == 1, timeout=60)
    (heartbeat,) = _scrape(job_client).find("facemint_worker_heartbeat_age_seconds")
    assert heartbeat.labels["worker"].endswith(f":{worker.pid}")

    def worker_runs() -> list[bool]:
        with engine.connect() as conn:
            query = "SELECT balanced FROM reconciliation_runs WHERE requested_by = 'worker'"
            return list(conn.scalars(text(query)))

    # None recorded yet, so the first look finds it due; the next is an interval (15 minutes) away.
    assert wait_for(worker_runs, timeout=60) == [True]
    result = _scrape(job_client)
    assert result.value("facemint_reconciliation_ok") == 1
    assert result.value("facemint_reconciliation_discrepancies") == 0

    worker.terminate()
    worker.wait(timeout=30)
    result = _scrape(job_client)
    assert result.value("facemint_workers_alive") == 0
    assert not result.find("facemint_worker_heartbeat_age_seconds")
    assert worker_runs() == [True]
