"""Helpers for the video job tests: clips made in code, a video submit, engines wrapped in-process to pace a
video's batches or stop it before its first one, the in-process worker watched from a thread, and readers of what a
video job recorded (its webhook events, its result's frames)."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine

from tests.inference.video_helpers import make_clip
from tests.jobs.conftest import SOURCE, Payer

FPS = 10


def clip_bytes(directory: Path, *, seconds: int, audio: str | None = None) -> bytes:
    """An MP4 of `seconds` at 10 fps with one demo face in every frame (192x144, encoded in milliseconds)."""
    path = directory / f"clip-{seconds}s-{os.urandom(4).hex()}.mp4"
    make_clip(path, fps=FPS, frames=seconds * FPS, audio=audio)
    return path.read_bytes()


def submit_video(
    client: TestClient, payer: Payer, video: bytes, *, data: dict[str, Any] | None = None, key: str | None = None
) -> Any:
    return client.post(
        "/v1/swaps",
        headers={**payer.headers, "Idempotency-Key": key or os.urandom(8).hex()},
        files={"source": ("s.png", SOURCE, "image/png"), "target": ("t.mp4", video, "video/mp4")},
        data=data or {},
    )


def accepted_video(client: TestClient, payer: Payer, video: bytes, **kwargs: Any) -> str:
    response = submit_video(client, payer, video, **kwargs)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


class PacedEngine:
    """The demo engine, pausing `pause` seconds after each batch of a video (after its progress report, before
    the next checkpoint), so a short clip runs long enough to watch, cancel or kill."""

    def __init__(self, engine: Any, pause: float) -> None:
        self.engine = engine
        self.pause = pause

    def swap(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine.swap(*args, **kwargs)

    def swap_video(self, *args: Any, progress: Callable[[int, int], None] | None = None, **kwargs: Any) -> Any:
        def paced(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total)
            time.sleep(self.pause)

        return self.engine.swap_video(*args, progress=paced, **kwargs)


class HeldAtFirstBatch:
    """The demo engine, whose first batch boundary waits (asking the worker's checkpoint again and again) until
    the worker stops the job there: no frame is ever processed."""

    def __init__(self, engine: Any, timeout: float = 15.0) -> None:
        self.engine = engine
        self.timeout = timeout

    def swap_video(self, *args: Any, checkpoint: Callable[[str], None], **kwargs: Any) -> Any:
        def held(stage: str) -> None:
            give_up = time.monotonic() + self.timeout
            while time.monotonic() < give_up:
                checkpoint(stage)  # raises once the heartbeat has learned the cancel
                time.sleep(0.02)
            raise AssertionError("the worker never stopped the job")

        return self.engine.swap_video(*args, checkpoint=held, **kwargs)


def run_watched(drain: Callable[..., None], engine: Any, watch: Callable[[threading.Event], None]) -> None:
    """Run the in-process worker (burst mode: until the queue is empty) with `engine`, while `watch` runs on a
    thread (RQ's worker wants the main thread); `watch` is told when the worker is done, and joined."""
    finished = threading.Event()
    failure: list[BaseException] = []

    def watcher() -> None:
        try:
            watch(finished)
        except BaseException as exc:  # re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=watcher, name="test-watcher", daemon=True)
    thread.start()
    try:
        drain(engine=engine)
    finally:
        finished.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the watcher did not finish"
    if failure:
        raise failure[0]


def events(engine: DbEngine, job_id: int) -> list[Any]:
    """The job's webhook events in the order they were recorded."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT id, event_type, payload FROM webhook_events WHERE job_id = :id ORDER BY id"),
                {"id": job_id},
            )
        )


def mp4_frames(data: bytes) -> tuple[int, float, str]:
    """(frames decoded, seconds from the first frame's time to the last's end, video codec) of an MP4."""
    with av.open(io.BytesIO(data), format="mp4") as container:
        stream = container.streams.video[0]
        times = [float(frame.time) for frame in container.decode(stream) if frame.time is not None]
        rate = float(stream.average_rate or FPS)
        return len(times), (max(times) - min(times) + 1 / rate) if times else 0.0, stream.codec_context.name
