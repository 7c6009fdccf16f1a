"""Postgres faults the crash tests do not cover: a COMMIT that landed but whose reply was lost (the settlement's,
and the submit's), and a cancel racing the settlement. Each ends with the job settled exactly once: one capture
or one release, one result file, no tokens left held (and the after-test reconciliation agrees)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from facemint.app import create_app
from facemint.config import Settings
from facemint.db import unit_of_work
from facemint.jobs import service as jobs
from facemint.jobs.errors import JobAlreadyFinished
from facemint.jobs.orm import JobStatus
from facemint.jobs.submission import SWAP_OPERATION
from facemint.storage import make_storage
from tests.fault_proxy import postgres_fault_proxy
from tests.jobs.conftest import Payer, balance, capture_count, counts, hold_row, job_row, problem, submit
from tests.jobs.test_crashes import accepted, assert_captured_once

# What the claim's, the settlement's and the submit's transactions say (jobs.service: claim, complete, submit).
CLAIM = "UPDATE jobs SET status = 'running'"
SETTLEMENT = "UPDATE jobs SET status = 'succeeded'"
SUBMIT = "INSERT INTO jobs"


def stored(settings: Settings, folder: str) -> list[str]:
    return sorted(item.key for item in make_storage(settings).list(folder))


def queued_ids(redis: Redis, settings: Settings) -> list[str]:
    return list(Queue(settings.queue_name, connection=redis).get_job_ids())


def drain_losing_a_commit_reply(drain: Callable[..., None], settings: Settings, statement: str) -> None:
    """Drain the queue with every worker connection going through the fault proxy, armed to lose the reply to the
    COMMIT of the transaction that runs `statement`."""
    assert settings.database_url is not None
    with postgres_fault_proxy(settings.database_url) as proxy:
        proxy.arm(statement)
        drain(settings.model_copy(update={"database_url": proxy.url}))
        assert proxy.fired.is_set(), "the commit went through the proxy"


def settled_once(engine: DbEngine, settings: Settings, job_id: str, payer: Payer) -> Any:
    """The job succeeded in its first attempt, charged once (1 of the payer's 5 tokens), with its one result kept."""
    done = job_row(engine, job_id)
    assert_captured_once(engine, done)
    assert done.attempts == 1
    assert balance(engine, payer.account_id) == (4, 0)
    assert stored(settings, "results") == [done.result_location]
    return done


class TestLostCommitReply:
    def test_a_settlement_whose_commit_reply_was_lost_is_found_settled(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job_id = accepted(job_client, payer)
        # The capture's COMMIT lands, its reply is lost, and the worker retries the settlement on a new connection.
        drain_losing_a_commit_reply(drain, job_settings, SETTLEMENT)
        # The retry found the job settled with this attempt's result: kept, and the only one.
        settled_once(engine, job_settings, job_id, payer)
        assert stored(job_settings, "inputs") == []
        assert job_row(engine, job_id).inputs_deleted_at is not None

    def test_a_claim_whose_commit_reply_was_lost_runs_the_job_in_that_attempt(
        self,
        job_client: TestClient,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
        job_settings: Settings,
    ) -> None:
        payer = make_payer(5)
        job_id = accepted(job_client, payer)
        drain_losing_a_commit_reply(drain, job_settings, CLAIM)
        # The retried claim found the job running under this worker: its own claim, which had landed. It ran the
        # job then, rather than leave it to the sweeper's stale check (an attempt lost, 30 s by default).
        settled_once(engine, job_settings, job_id, payer)

    def test_a_submit_whose_commit_reply_was_lost_is_replayed_once(
        self,
        make_payer: Callable[..., Payer],
        drain: Callable[..., None],
        engine: DbEngine,
        job_settings: Settings,
        redis_client: Redis,
    ) -> None:
        payer = make_payer(5)
        assert job_settings.database_url is not None
        with postgres_fault_proxy(job_settings.database_url) as proxy:
            app = create_app(job_settings.model_copy(update={"database_url": proxy.url}))
            with TestClient(app) as client:
                proxy.arm(SUBMIT)
                lost = submit(client, payer, key="lost-reply")
                assert proxy.fired.is_set(), "the submit's commit went through the proxy"
                problem(lost, 503, "database_unavailable")
                assert int(lost.headers["Retry-After"]) >= 1
                # The commit did land: the job and its hold exist, and its inputs were kept, but the enqueue
                # (an after-commit step) never ran.
                assert counts(engine, payer.user_id) == (1, 1)
                assert balance(engine, payer.account_id) == (5, 1)
                assert queued_ids(redis_client, job_settings) == []

                replays = [submit(client, payer, key="lost-reply") for _ in range(2)]
        for replay in replays:
            assert replay.status_code == 200, replay.text
            assert replay.headers["Idempotent-Replayed"] == "true"
        job_id = replays[0].json()["id"]
        assert replays[1].json()["id"] == job_id
        assert counts(engine, payer.user_id) == (1, 1)
        assert balance(engine, payer.account_id) == (5, 1)
        # The replay queued it (after its own commit); the second replay found the entry and added none.
        assert queued_ids(redis_client, job_settings) == [job_id]
        # The replays' own uploads are gone; the job's are the first request's.
        assert stored(job_settings, "inputs") == [f"inputs/{job_id}/source", f"inputs/{job_id}/target"]

        drain()
        done = job_row(engine, job_id)
        assert_captured_once(engine, done)
        assert done.attempts == 1
        assert balance(engine, payer.account_id) == (4, 0)
        assert stored(job_settings, "results") == [done.result_location]


ROUNDS = 20


def _submit_and_claim(sessions: sessionmaker[Session], payer: Payer, n: int) -> Any:
    with unit_of_work(sessions) as session:
        submitted = jobs.submit(
            session,
            request=jobs.SubmitRequest(
                public_id=(public_id := jobs.new_public_id()),
                tenant_id=payer.tenant_id,
                user_id=payer.user_id,
                api_key_id=None,
                account_id=payer.account_id,
                operations=(SWAP_OPERATION,),
                queue="race",
                units=1,
                idempotency_key=f"race-{n}",
                request_hash=b"race",
                options={},
                input_location=f"inputs/{public_id}",
                webhook_url=None,
                max_attempts=3,
                deadline_seconds=600,
            ),
        )
    assert not submitted.replayed
    with unit_of_work(sessions) as session:
        return jobs.claim(session, public_id=public_id, worker_id="race")


def _cancel(sessions: sessionmaker[Session], job: Any, barrier: threading.Barrier) -> Any:
    """The user's cancel (POST /v1/jobs/{id}/cancel), in its own transaction."""
    barrier.wait()
    try:
        with unit_of_work(sessions) as session:
            return jobs.cancel(session, job=job)
    except JobAlreadyFinished as exc:
        return exc


def _settle(sessions: sessionmaker[Session], job: Any, barrier: threading.Barrier) -> Any:
    """The worker's settlement (tasks._run: the capture), in its own transaction."""
    barrier.wait()
    with unit_of_work(sessions) as session:
        return jobs.complete(
            session,
            job_id=job.id,
            attempt=job.attempts,
            result_location=f"results/{job.public_id}-a1.png",
            content_type="image/png",
            size_bytes=1,
            timings_ms={},
            result_ttl_seconds=3600,
        )


def _settle_canceled(session: Session, job: Any) -> Any:
    """What the worker does when its capture was refused because of a cancel (tasks._run)."""
    return jobs.fail(
        session,
        job_id=job.id,
        attempt=job.attempts,
        code="canceled",
        detail="canceled by the caller; stopped before the capture",
        status=JobStatus.canceled,
    )


def test_a_cancel_racing_the_settlement_has_exactly_one_outcome(
    make_payer: Callable[..., Payer], session_factory: sessionmaker[Session], engine: DbEngine
) -> None:
    payer = make_payer(ROUNDS)
    outcomes: Counter[str] = Counter()
    for n in range(ROUNDS):
        job = _submit_and_claim(session_factory, payer, n)
        assert job is not None
        assert job.status == "running"
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            futures = (
                pool.submit(_cancel, session_factory, job, barrier),
                pool.submit(_settle, session_factory, job, barrier),
            )
            canceled, completed = (future.result(timeout=30) for future in futures)

        if completed is not None:
            # The settlement won: charged once, and the cancel was told the job had already finished (409).
            assert isinstance(canceled, JobAlreadyFinished), canceled
            assert canceled.status_code == 409
            final = job_row(engine, job.public_id)
            assert (final.status, final.tokens_captured, final.cancel_requested_at) == ("succeeded", 1, None)
            # A late cancel settlement (the worker's, the sweeper's) changes nothing now.
            with unit_of_work(session_factory) as session:
                assert _settle_canceled(session, job) is None
            assert_captured_once(engine, job_row(engine, job.public_id))
            outcomes["succeeded"] += 1
        else:
            # The cancel won: it was recorded on the running job, and the capture refused to charge. The worker
            # then settles it canceled (tasks._run does exactly this), releasing the hold.
            assert not isinstance(canceled, Exception), canceled
            assert canceled.status == "running"
            assert canceled.cancel_requested_at is not None
            with unit_of_work(session_factory) as session:
                assert _settle_canceled(session, job) is not None
            # A capture retried now (a duplicate run, a lost reply) charges nothing.
            assert _settle(session_factory, job, threading.Barrier(1)) is None
            final = job_row(engine, job.public_id)
            assert (final.status, final.tokens_captured) == ("canceled", None)
            assert hold_row(engine, final.hold_id).status == "released"
            assert capture_count(engine, final.hold_id) == 0
            outcomes["canceled"] += 1
    print(f"\n[race] cancel vs settlement over {ROUNDS} rounds: {dict(outcomes)}")  # noqa: T201
    assert sum(outcomes.values()) == ROUNDS
    charged = outcomes["succeeded"]
    assert balance(engine, payer.account_id) == (ROUNDS - charged, 0)
