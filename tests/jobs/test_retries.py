"""Infrastructure failures (the engine runtime, not the input) are retried within the attempt budget and charged
once on success, or failed and released when the budget is spent. The engine is wrapped in-process so a
failure can be injected at a chosen attempt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy.engine import Engine as DbEngine

from facemint.app import create_app
from facemint.config import Settings
from inference.errors import ProviderUnavailable
from tests.jobs.conftest import Payer, balance, capture_count, execute, hold_row, job_row, submit, wait_for


class FlakyEngine:
    """The demo engine, failing its first `failures` swaps with `error` (an infrastructure failure)."""

    def __init__(self, engine: Any, failures: int, error: Exception | None = None) -> None:
        self.engine = engine
        self.failures = failures
        self.error = error or RuntimeError("the accelerator fell over")
        self.calls = 0

    def swap(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.engine.swap(*args, **kwargs)


def accepted(client: TestClient, payer: Payer) -> str:
    response = submit(client, payer)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_a_retried_job_is_queued_again_at_once_and_captured_once(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    sweep: Callable[..., Any],
    demo_engine: Any,
    redis_client: Redis,
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    payer = make_payer(5)
    job_id = accepted(job_client, payer)
    flaky = FlakyEngine(demo_engine, failures=1)
    drain(engine=flaky)
    retried = job_row(engine, job_id)
    assert (retried.status, retried.attempts, retried.error_code) == ("queued", 1, "worker_error")
    assert hold_row(engine, retried.hold_id).status == "held"
    assert balance(engine, payer.account_id) == (5, 1)
    # The retry must be queued now (or left for the very next sweep), not only once the redispatch timer
    # (`job_redispatch_seconds`, 60 s by default) says its queue entry may be lost.
    no_redispatch = job_settings.model_copy(update={"job_redispatch_seconds": 3600})

    def queued_again() -> bool:
        in_queue = job_id.encode() in redis_client.lrange(f"rq:queue:{job_settings.queue_name}", 0, -1)
        return in_queue or sweep(no_redispatch).dispatched == [job_id]

    wait_for(queued_again, timeout=5, interval=0.2)
    drain(engine=flaky)
    done = job_row(engine, job_id)
    assert (done.status, done.attempts, done.tokens_captured, done.error_code) == ("succeeded", 2, 1, None)
    assert capture_count(engine, done.hold_id) == 1
    assert balance(engine, payer.account_id) == (4, 0)
    assert flaky.calls == 2


def test_out_of_attempts_fails_and_releases(
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    sweep: Callable[..., Any],
    demo_engine: Any,
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    payer = make_payer(5)
    settings = job_settings.model_copy(update={"job_max_attempts": 2})
    with TestClient(create_app(settings)) as client:
        job_id = accepted(client, payer)
    flaky = FlakyEngine(demo_engine, failures=10)
    drain(engine=flaky)
    assert job_row(engine, job_id).status == "queued"
    wait_for(lambda: sweep().dispatched == [job_id], timeout=10, interval=0.2)
    drain(engine=flaky)
    done = job_row(engine, job_id)
    assert (done.status, done.attempts, done.error_code) == ("failed", 2, "worker_error")
    assert "RuntimeError" in done.error_detail
    assert "accelerator" not in done.error_detail  # the message may name server internals: only the log has it
    assert hold_row(engine, done.hold_id).status == "released"
    assert capture_count(engine, done.hold_id) == 0
    assert balance(engine, payer.account_id) == (5, 0)
    assert flaky.calls == 2
    # Nothing runs it again.
    assert sweep().dispatched == []
    drain(engine=flaky)
    assert flaky.calls == 2


def test_an_engine_infrastructure_error_keeps_its_code(
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    demo_engine: Any,
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    payer = make_payer(5)
    settings = job_settings.model_copy(update={"job_max_attempts": 1})
    with TestClient(create_app(settings)) as client:
        job_id = accepted(client, payer)
    drain(engine=FlakyEngine(demo_engine, failures=1, error=ProviderUnavailable("CUDA is gone")))
    done = job_row(engine, job_id)
    assert (done.status, done.attempts, done.error_code) == ("failed", 1, "provider_unavailable")
    assert hold_row(engine, done.hold_id).status == "released"
    assert balance(engine, payer.account_id) == (5, 0)


class CancelAfterLastStage:
    """The demo engine; the caller's cancel lands after the last stage boundary, before the capture."""

    def __init__(self, engine: Any, db: DbEngine) -> None:
        self.engine = engine
        self.db = db

    def swap(self, *args: Any, **kwargs: Any) -> Any:
        result = self.engine.swap(*args, **kwargs)
        execute(self.db, "UPDATE jobs SET cancel_requested_at = now() WHERE status = 'running'")
        return result


def test_a_cancel_just_before_the_capture_settles_canceled_at_once(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    demo_engine: Any,
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    """The capture refuses a job with a cancel requested; the worker then settles it canceled itself, rather
    than leaving it `running` for the sweeper to find stale (`job_stale_after_seconds` later)."""
    payer = make_payer(5)
    job_id = accepted(job_client, payer)
    drain(engine=CancelAfterLastStage(demo_engine, engine))
    done = job_row(engine, job_id)
    assert (done.status, done.error_code) == ("canceled", "canceled")
    assert hold_row(engine, done.hold_id).status == "released"
    assert capture_count(engine, done.hold_id) == 0
    assert balance(engine, payer.account_id) == (5, 0)
    results = job_settings.resolved_storage_dir / "results"
    assert not results.exists() or not any(results.iterdir())  # the uncharged result was not kept
