"""Video jobs through HTTP and the in-process worker: run end to end and charged by the second, progress on the
job while it runs (written at most once a second), `job.progress` webhooks (one per 10 % step, in order, none
after the terminal event), a cancel mid-video charged for the seconds processed only (its partial MP4 the
result), a cancel before any frame charged nothing, and the enhancer's own price line on a video."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint import metrics
from facemint.config import Settings
from facemint.jobs.video_metering import progress_step
from facemint.reports.service import reconcile_all
from tests.jobs.conftest import Payer, balance, capture_count, hold_row, job_row, problem, wait_for
from tests.jobs.video_job_helpers import (
    FPS,
    HeldAtFirstBatch,
    PacedEngine,
    accepted_video,
    clip_bytes,
    events,
    mp4_frames,
    run_watched,
)

HOOK = "http://127.0.0.1:9/hook"  # recorded, never delivered here: nobody runs the sender
SWAP_PER_SECOND, ENHANCE_PER_SECOND = 10, 5


def get_job(client: TestClient, payer: Payer, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=payer.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_reconciles(engine: DbEngine) -> None:
    with Session(engine) as session:
        report = reconcile_all(session)
    assert report.balanced, report.discrepancies


def test_a_video_runs_end_to_end_and_is_charged_per_second(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    engine: DbEngine,
    redis_client: Redis,
    job_settings: Settings,
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=2, audio="aac"))
    assert balance(engine, payer.account_id) == (50, 2 * SWAP_PER_SECOND)
    drain()

    done = get_job(job_client, payer, job_id)
    assert done["status"] == "succeeded", done
    assert (done["units"], done["tokens_held"], done["tokens_captured"]) == (2, 20, 20)
    assert done["progress"]["frames_done"] == done["progress"]["frames_total"] == 2 * FPS
    assert done["progress"]["percent"] == 100.0
    assert done["result_content_type"] == "video/mp4"
    row = job_row(engine, job_id)
    assert row.result_location.endswith("-a1.mp4")
    assert capture_count(engine, row.hold_id) == 1
    assert balance(engine, payer.account_id) == (30, 0)
    result = job_client.get(done["result_url"], headers=payer.headers)
    assert result.status_code == 200
    assert int(result.headers["content-length"]) == done["result_size_bytes"]
    frames, seconds, codec = mp4_frames(result.content)
    assert (frames, codec) == (2 * FPS, "h264")
    assert math.isclose(seconds, 2.0, abs_tol=0.05)
    # The inputs and the staging file the result was encoded into are gone; only the result stays.
    storage = job_settings.resolved_storage_dir
    assert sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*") if p.is_file()) == [row.result_location]
    # The engine's stage timings go to series of their own (a video's are not an image's).
    stages = {stage.decode() for stage in redis_client.smembers(metrics.ENGINE_STAGES_KEY)}
    assert {"video_total", "video_encode"} <= stages
    assert "total" not in stages
    assert_reconciles(engine)


def test_progress_shows_while_running_and_is_written_at_most_once_a_second(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    demo_engine: Any,
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(100)
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=6))
    seen: list[dict[str, Any]] = []

    def watch(finished: threading.Event) -> None:
        while not finished.is_set():
            body = get_job(job_client, payer, job_id)
            if body["status"] == "running" and body["progress"] is not None:
                seen.append(body["progress"])
            time.sleep(0.05)

    run_watched(drain, PacedEngine(demo_engine, pause=0.3), watch)
    running = [p for p in seen if 0 < p["frames_done"] < p["frames_total"]]
    assert running, seen  # progress was visible on GET /v1/jobs/{id} mid-run
    assert all(p["frames_total"] == 6 * FPS for p in seen)
    assert all(0 < p["percent"] < 100 for p in running)
    done_counts = [p["frames_done"] for p in seen]
    assert done_counts == sorted(done_counts)  # never backwards within an attempt
    # Each write stamps progress_at: the ones seen while running are a second apart (the worker's throttle runs on
    # its own clock, the stamp is the transaction's start: a little slack), so there are at most about as many as
    # the seconds the job ran, whatever the number of batches (8 here).
    times = sorted({_epoch(p["updated_at"]) for p in seen})
    assert all(b - a >= 0.8 for a, b in zip(times, times[1:], strict=False)), times
    final = get_job(job_client, payer, job_id)
    assert final["status"] == "succeeded"
    ran = _epoch(final["finished_at"]) - _epoch(final["started_at"])
    assert 1 <= len(times) <= ran + 1, (times, ran)
    assert final["progress"]["frames_done"] == 6 * FPS  # the settlement writes what the throttle held back


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_progress_webhooks_one_per_step_in_order_and_none_after_the_end(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    demo_engine: Any,
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(100)
    data = {"webhook_url": HOOK, "progress_webhooks": "true"}
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=4), data=data)
    drain(engine=PacedEngine(demo_engine, pause=0.5))
    row = job_row(engine, job_id)
    assert row.status == "succeeded"
    recorded = events(engine, row.id)
    kinds = [e.event_type for e in recorded]
    assert kinds[-1] == "job.succeeded"
    assert kinds.count("job.succeeded") == 1
    progress = [e.payload for e in recorded if e.event_type == "job.progress"]
    assert len(progress) >= 2, kinds  # 5 batches, one written about every second
    assert len(progress) == len(kinds) - 1  # every other event is a progress one, all before the terminal one
    steps = [
        progress_step(p["data"]["progress"]["frames_done"], p["data"]["progress"]["frames_total"]) for p in progress
    ]
    assert steps == sorted(set(steps)), steps  # one per 10 % step at most, in order
    assert all(1 <= step <= 9 for step in steps)
    for payload in progress:
        assert payload["type"] == "job.progress"
        assert payload["data"]["id"] == job_id
        assert payload["data"]["status"] == "running"
        assert payload["timestamp"] == payload["data"]["progress"]["updated_at"]


def test_a_cancel_mid_video_charges_the_seconds_processed_and_keeps_them_as_the_result(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    demo_engine: Any,
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(100)
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=6, audio="aac"), data={"webhook_url": HOOK})
    assert balance(engine, payer.account_id) == (100, 60)

    def cancel_mid_video(_: threading.Event) -> None:
        wait_for(lambda: job_row(engine, job_id).frames_done, timeout=30)  # the first batch is done
        response = job_client.post(f"/v1/jobs/{job_id}/cancel", headers=payer.headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "running"

    run_watched(drain, PacedEngine(demo_engine, pause=0.3), cancel_mid_video)

    done = get_job(job_client, payer, job_id)
    assert done["status"] == "canceled", done
    frames = done["progress"]["frames_done"]
    assert 8 <= frames < 6 * FPS
    seconds = math.ceil(frames / FPS)
    assert done["tokens_captured"] == seconds * SWAP_PER_SECOND
    assert done["error"]["code"] == "canceled"
    assert f"charged for the {seconds} of 6 seconds processed" in done["error"]["detail"]
    row = job_row(engine, job_id)
    hold = hold_row(engine, row.hold_id)
    assert (hold.status, hold.captured_amount) == ("captured", seconds * SWAP_PER_SECOND)
    assert capture_count(engine, row.hold_id) == 1
    assert balance(engine, payer.account_id) == (100 - seconds * SWAP_PER_SECOND, 0)  # the rest released

    result = job_client.get(f"/v1/jobs/{job_id}/result", headers=payer.headers)
    assert result.status_code == 200
    assert result.headers["content-type"] == "video/mp4"
    decoded, duration, _ = mp4_frames(result.content)
    assert decoded == frames  # playable, and exactly the frames charged for
    assert duration < 6.0
    kinds = [e.event_type for e in events(engine, row.id)]
    assert kinds == ["job.canceled"]
    assert_reconciles(engine)


def test_a_cancel_before_any_frame_charges_nothing(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    demo_engine: Any,
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=2))

    def cancel_once_running(_: threading.Event) -> None:
        wait_for(lambda: job_row(engine, job_id).status == "running", timeout=30)
        assert job_client.post(f"/v1/jobs/{job_id}/cancel", headers=payer.headers).status_code == 200

    run_watched(drain, HeldAtFirstBatch(demo_engine), cancel_once_running)
    done = job_row(engine, job_id)
    assert (done.status, done.tokens_captured, done.result_location) == ("canceled", None, None)
    assert "before any frame" in done.error_detail
    assert hold_row(engine, done.hold_id).status == "released"
    assert capture_count(engine, done.hold_id) == 0
    assert balance(engine, payer.account_id) == (50, 0)
    problem(job_client.get(f"/v1/jobs/{job_id}/result", headers=payer.headers), 410, "result_gone")


def test_the_enhancer_on_a_video_is_priced_and_charged_with_both_lines(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    data = {"processors": "face_swapper,face_enhancer"}
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=1), data=data)
    per_second = SWAP_PER_SECOND + ENHANCE_PER_SECOND
    assert balance(engine, payer.account_id) == (50, per_second)
    drain()
    done = get_job(job_client, payer, job_id)
    assert done["status"] == "succeeded", done
    assert [(line["operation"], line["tokens_per_unit"]) for line in done["price_lines"]] == [
        ("swap.video", SWAP_PER_SECOND),
        ("enhance.video", ENHANCE_PER_SECOND),
    ]
    assert done["processors"] == ["face_swapper", "face_enhancer"]
    assert (done["tokens_per_unit"], done["tokens_captured"]) == (per_second, per_second)
    assert balance(engine, payer.account_id) == (50 - per_second, 0)
