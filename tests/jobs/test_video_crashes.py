"""Video jobs when workers die: a real `facemint worker` SIGKILLed mid-video leaves the job to another worker,
which runs it again from the start and charges it once; a canceled video whose worker died is released in full
(nothing was delivered); a retry clears the dead attempt's progress and never repeats its `job.progress`
webhooks; the queue entry's run timeout follows the job's own deadline, which grows with the video."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job as RQJob
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.jobs import queue
from facemint.jobs import service as jobs
from facemint.jobs.video_metering import progress_step
from tests.jobs.conftest import (
    Payer,
    balance,
    capture_count,
    execute,
    hold_row,
    job_row,
    wait_for,
    wait_terminal,
)
from tests.jobs.test_crashes import assert_reconciles, kill
from tests.jobs.video_job_helpers import FPS, accepted_video, clip_bytes, events, mp4_frames

HOOK = "http://127.0.0.1:9/hook"


@pytest.mark.slow
def test_a_worker_killed_mid_video_is_retried_from_the_start_and_charged_once(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    engine: DbEngine,
    job_settings: Settings,
    tmp_path: Path,
) -> None:
    payer = make_payer(100)
    # The debug pause holds a video at its first batch boundary after frames were done: killed mid-video.
    first = start_worker(FACEMINT_DEBUG_JOB_DELAY_SECONDS="10")
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=3, audio="aac"))
    midway = wait_for(lambda: (row := job_row(engine, job_id)).frames_done and row, timeout=60)
    assert 0 < midway.frames_done < midway.frames_total == 3 * FPS
    assert midway.worker_id.endswith(f":{first.pid}")
    kill(first)
    assert balance(engine, payer.account_id) == (100, 30)  # the hold is intact

    second = start_worker()
    done = wait_terminal(engine, job_id, timeout=60)
    assert (done.status, done.attempts, done.tokens_captured) == ("succeeded", 2, 30), done.error_detail
    assert done.worker_id.endswith(f":{second.pid}")
    assert done.result_location.endswith("-a2.mp4")
    assert (done.frames_done, done.frames_total) == (3 * FPS, 3 * FPS)  # the retry ran every frame again
    hold = hold_row(engine, done.hold_id)
    assert (hold.status, hold.captured_amount) == ("captured", 30)
    assert capture_count(engine, done.hold_id) == 1
    assert balance(engine, payer.account_id) == (70, 0)
    result = job_client.get(f"/v1/jobs/{job_id}/result", headers=payer.headers)
    assert result.status_code == 200
    frames, seconds, _ = mp4_frames(result.content)
    assert frames == 3 * FPS
    assert math.isclose(seconds, 3.0, abs_tol=0.05)
    # The dead attempt's staging file goes with the job's other strays once it is settled.
    wait_for(lambda: not list((job_settings.resolved_storage_dir / "results").glob("*.staging")), timeout=10)
    assert_reconciles(job_settings)


def test_a_canceled_video_whose_worker_died_is_released_in_full(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session: Session,
    sweep: Callable[..., Any],
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=2), data={"webhook_url": HOOK})
    running = jobs.claim(session, public_id=job_id, worker_id="doomed")
    assert running is not None
    jobs.record_progress(session, job_id=running.id, attempt=1, frames_done=12, frames_total=20)
    session.commit()
    assert job_client.post(f"/v1/jobs/{job_id}/cancel", headers=payer.headers).json()["status"] == "running"
    execute(engine, "UPDATE jobs SET heartbeat_at = now() - interval '1 hour' WHERE public_id = :id", id=job_id)

    assert job_id in sweep().failed
    done = job_row(engine, job_id)
    # Frames were processed, but the partial file died with the worker: nothing delivered, nothing charged.
    assert (done.status, done.tokens_captured, done.result_location) == ("canceled", None, None)
    assert hold_row(engine, done.hold_id).status == "released"
    assert capture_count(engine, done.hold_id) == 0
    assert balance(engine, payer.account_id) == (50, 0)
    assert [e.event_type for e in events(engine, done.id)] == ["job.canceled"]


def test_a_retry_clears_progress_and_repeats_no_progress_webhook(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session: Session,
    sweep: Callable[..., Any],
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    data = {"webhook_url": HOOK, "progress_webhooks": "true"}
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=2), data=data)
    first = jobs.claim(session, public_id=job_id, worker_id="doomed")
    assert first is not None
    for done in (5, 11, 11):  # 25 % and 55 %: steps 2 and 5, each told once
        jobs.record_progress(session, job_id=first.id, attempt=1, frames_done=done, frames_total=20)
    session.commit()
    execute(engine, "UPDATE jobs SET heartbeat_at = now() - interval '1 hour' WHERE public_id = :id", id=job_id)
    assert sweep().requeued == [job_id]

    second = jobs.claim(session, public_id=job_id, worker_id="survivor")
    assert second is not None
    assert (second.attempts, second.frames_done, second.frames_total, second.progress_at) == (2, None, None, None)
    for done in (4, 11, 14):  # steps 2 and 5 were told by the dead attempt already; 70 % was not
        jobs.record_progress(session, job_id=second.id, attempt=2, frames_done=done, frames_total=20)
    assert jobs.record_progress(session, job_id=second.id, attempt=1, frames_done=20, frames_total=20) is None
    session.commit()
    steps = [
        progress_step(e.payload["data"]["progress"]["frames_done"], 20)
        for e in events(engine, second.id)
        if e.event_type == "job.progress"
    ]
    assert steps == [2, 5, 7]
    # Settled: no progress is written (or told) after the terminal event.
    assert jobs.fail(session, job_id=second.id, attempt=2, code="no_target_face", detail="none") is not None
    assert jobs.record_progress(session, job_id=second.id, attempt=2, frames_done=18, frames_total=20) is None
    session.commit()
    assert [e.event_type for e in events(engine, second.id)][-1] == "job.failed"


def test_the_queue_entry_times_out_at_the_jobs_own_deadline(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    sweep: Callable[..., Any],
    redis_client: Redis,
    engine: DbEngine,
    job_settings: Settings,
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=2))
    row = job_row(engine, job_id)
    seconds_left = (row.deadline_at - row.created_at).total_seconds()
    # 2 s of video: the deadline is the base plus 60 s per second, beyond the image jobs' deadline.
    assert seconds_left > job_settings.job_deadline_seconds
    at_submit = RQJob.fetch(job_id, connection=redis_client).timeout
    assert at_submit is not None
    assert seconds_left < at_submit <= seconds_left + queue.RUN_TIMEOUT_MARGIN_SECONDS + 1

    # The dispatcher queues it again (its entry lost) with what is left of the same deadline.
    RQJob.fetch(job_id, connection=redis_client).delete()
    execute(
        engine,
        "UPDATE jobs SET dispatched_at = NULL, created_at = created_at - interval '5 seconds' WHERE public_id = :id",
        id=job_id,
    )
    assert job_id in sweep().dispatched
    again = RQJob.fetch(job_id, connection=redis_client).timeout
    assert again is not None
    assert job_settings.job_deadline_seconds + queue.RUN_TIMEOUT_MARGIN_SECONDS < again <= at_submit
