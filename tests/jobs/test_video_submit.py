"""POST /v1/swaps with a video target: the price and hold per started second (trims and the enhancer's line
included), what the job records and reads back, every probe refusal as its own 4xx with nothing held or left
stored, an oversized video refused while it streams (holding no transaction meanwhile), replays, the options only a
video takes, and range downloads of a video result."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from facemint.app import create_app
from facemint.config import Settings
from facemint.db import unit_of_work
from facemint.jobs import service as jobs
from facemint.jobs.files import attempt_result_key
from facemint.storage import make_storage
from tests.inference.video_helpers import claim_duration, claim_frame_size, make_audio_only, make_clip, refer_to_file
from tests.jobs.conftest import (
    SOURCE,
    TARGET,
    Payer,
    balance,
    counts,
    execute,
    hold_row,
    job_row,
    problem,
    serving,
    submit,
    wait_for,
)

MP4 = "video/mp4"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Tiny clips (192x144, 10 fps) made once for the module."""
    folder = tmp_path_factory.mktemp("clips")

    def clip(name: str, **options: Any) -> bytes:
        return make_clip(folder / name, **options).path.read_bytes()

    base = clip("base.mp4", frames=24)  # 2.4 s
    return {
        "base": base,
        "other": clip("other.mp4", frames=24, faces=lambda i: [(50, 30, 64, 3)]),
        "mov": clip("c.mov", container="mov", frames=10),
        "mkv": clip("c.mkv", container="matroska", frames=10),
        "webm": clip("c.webm", container="webm", codec="libvpx-vp9", frames=10),
        "phone": clip("phone.mp4", frames=10, rotation=90, audio="aac"),
        "variable": clip("vfr.mp4", frames=10, frame_seconds=lambda i: 0.05 if i % 2 else 0.15),
        "fast": clip("fast.mp4", fps=100, frames=5),
        "many_frames": clip("many.mp4", frames=40),  # 4 s: over the refusal app's 30 frames
        "audio_only": make_audio_only(folder / "audio.mp4").read_bytes(),
        "huge_frames": claim_frame_size(base, 100_000, 100_000, in_container=True),
        "ten_hours": claim_duration(base, 36_000.0),
        "elsewhere": refer_to_file(base, "file:///etc/passwd"),
    }


def send_video(
    client: TestClient,
    payer: Payer,
    video: bytes,
    *,
    key: str | None = None,
    data: dict[str, str] | None = None,
    filename: str = "t.mp4",
    content_type: str = MP4,
) -> Any:
    return client.post(
        "/v1/swaps",
        headers={**payer.headers, "Idempotency-Key": key or os.urandom(8).hex()},
        files={"source": ("s.png", SOURCE, "image/png"), "target": (filename, video, content_type)},
        data=data or {},
    )


def stored_paths(settings: Settings) -> list[Path]:
    """Everything under the storage's inputs (files and folders): a refused upload leaves nothing, not even a folder."""
    root = settings.resolved_storage_dir / "inputs"
    return sorted(root.rglob("*")) if root.exists() else []


def assert_nothing_recorded(engine: DbEngine, payer: Payer, settings: Settings, funded: int) -> None:
    assert counts(engine, payer.user_id) == (0, 0)
    assert balance(engine, payer.account_id) == (funded, 0)
    assert stored_paths(settings) == []


# --- price and hold ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "units", "lines"),
    [
        ({}, 3, [("swap.video", 10)]),  # 2.4 s: 3 started seconds
        ({"trim_start": "0.5", "trim_end": "1.6"}, 2, [("swap.video", 10)]),  # 1.1 s
        ({"trim_start": "1.9"}, 1, [("swap.video", 10)]),  # 0.5 s to the end
        ({"processors": "face_enhancer, face_swapper"}, 3, [("swap.video", 10), ("enhance.video", 5)]),
    ],
    ids=["whole", "trimmed", "trimmed-to-end", "enhanced"],
)
def test_a_video_holds_its_started_seconds_times_its_price_lines(
    data: dict[str, str],
    units: int,
    lines: list[tuple[str, int]],
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    job_settings: Settings,
    clips: dict[str, bytes],
) -> None:
    payer = make_payer(100)
    response = send_video(job_client, payer, clips["base"], data=data)
    assert response.status_code == 202, response.text
    job = response.json()
    per_unit = sum(tokens for _, tokens in lines)
    assert (job["operation"], job["units"], job["tokens_per_unit"]) == ("swap.video", units, per_unit)
    assert job["tokens_held"] == units * per_unit
    assert response.headers["X-Tokens-Held"] == str(units * per_unit)
    assert [(line["operation"], line["version"], line["tokens_per_unit"]) for line in job["price_lines"]] == [
        (operation, 1, tokens) for operation, tokens in lines
    ]
    assert balance(engine, payer.account_id) == (100, units * per_unit)
    row = job_row(engine, job["id"])
    assert hold_row(engine, row.hold_id).amount == units * per_unit
    # The deadline grows with the trimmed seconds; the hold outlives it by the usual margin.
    seconds = job["media"]["trim_end"] - job["media"]["trim_start"]
    expected = job_settings.job_deadline_seconds + math.ceil(job_settings.video_deadline_seconds_per_second * seconds)
    assert abs((row.deadline_at - row.created_at).total_seconds() - expected) < 2
    with engine.connect() as conn:
        expires = conn.exec_driver_sql("SELECT expires_at FROM holds WHERE id = %s", (row.hold_id,)).scalar_one()
    assert abs((expires - row.deadline_at).total_seconds() - jobs.HOLD_MARGIN_SECONDS) < 2
    # The input is stored whole under the job's prefix (moved from where it streamed, nothing staged left).
    assert sorted(p.name for p in stored_paths(job_settings) if p.is_file()) == ["source", "target"]
    assert (job_settings.resolved_storage_dir / row.input_location / "target").read_bytes() == clips["base"]


def test_a_video_job_reads_back_its_probe_trim_processors_and_progress(
    job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine, clips: dict[str, bytes]
) -> None:
    payer = make_payer(100)
    response = send_video(job_client, payer, clips["phone"], data={"trim_start": "0.2", "trim_end": "0.8", "crf": "28"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["processors"] == ["face_swapper"]
    media = job["media"]
    assert (media["width"], media["height"], media["rotation"], media["has_audio"]) == (144, 192, 90, True)
    assert (media["fps"], media["frame_count"], media["variable_frame_rate"]) == (10.0, 10, False)
    assert media["duration_seconds"] == pytest.approx(1.0, abs=0.01)
    assert (media["trim_start"], media["trim_end"], media["billed_seconds"]) == (0.2, 0.8, 1)
    options = job["options"]
    assert (options["media"], options["output_format"], options["crf"], options["progress_webhooks"]) == (
        "video",
        "mp4",
        28,
        False,
    )
    assert options["trim"] == {"start": 0.2, "end": 0.8}
    assert options["probe"]["container"] == "mp4"
    assert options["probe"]["video_codec"] == "h264"
    assert job["progress"] is None
    # What a worker writes as it goes (WORKER's jobs.record_progress) is read back as a percentage.
    execute(
        engine,
        "UPDATE jobs SET frames_done = 3, frames_total = 6, progress_at = now() WHERE public_id = :id",
        id=job["id"],
    )
    progress = job_client.get(f"/v1/jobs/{job['id']}", headers=payer.headers).json()["progress"]
    assert (progress["frames_done"], progress["frames_total"], progress["percent"]) == (3, 6, 50.0)


def test_the_default_crf_is_the_setting(
    job_client: TestClient, make_payer: Callable[..., Payer], job_settings: Settings, clips: dict[str, bytes]
) -> None:
    job = send_video(job_client, make_payer(100), clips["base"]).json()
    assert job["options"]["crf"] == job_settings.video_crf == 20


def test_a_variable_frame_rate_is_accepted_and_said(
    job_client: TestClient, make_payer: Callable[..., Payer], clips: dict[str, bytes]
) -> None:
    job = send_video(job_client, make_payer(100), clips["variable"]).json()
    assert job["media"]["variable_frame_rate"] is True
    assert job["media"]["has_audio"] is False


@pytest.mark.parametrize(("clip", "filename", "content_type"), [
    ("mov", "t.mov", "video/quicktime"),
    ("mkv", "t.mkv", "video/x-matroska"),
    ("webm", "t.webm", "video/webm"),
    ("base", "no-extension", "application/octet-stream"),  # recognised by its content, not its name or type
])  # fmt: skip
def test_every_container_is_recognised_by_its_content(
    clip: str,
    filename: str,
    content_type: str,
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    clips: dict[str, bytes],
) -> None:
    response = send_video(job_client, make_payer(100), clips[clip], filename=filename, content_type=content_type)
    assert response.status_code == 202, response.text
    assert response.json()["operation"] == "swap.video"


def test_an_image_with_the_enhancer_holds_both_lines(
    job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine
) -> None:
    payer = make_payer(5)
    response = submit(job_client, payer, data={"processors": "face_swapper,face_enhancer"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["operation"], job["units"], job["tokens_per_unit"], job["tokens_held"]) == ("swap.image", 1, 2, 2)
    assert [line["operation"] for line in job["price_lines"]] == ["swap.image", "enhance.image"]
    assert job["processors"] == ["face_swapper", "face_enhancer"]
    assert job["media"] is None
    assert job["progress"] is None
    assert balance(engine, payer.account_id) == (5, 2)


def test_a_new_video_price_applies_to_the_next_video(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    staff_headers: dict[str, str],
    clips: dict[str, bytes],
) -> None:
    payer = make_payer(200)
    before = send_video(job_client, payer, clips["base"]).json()
    created = job_client.post(
        "/admin/v1/prices", json={"operation": "enhance.video", "tokens_per_unit": 7}, headers=staff_headers
    )
    assert created.status_code == 201, created.text
    after = send_video(job_client, payer, clips["base"], data={"processors": "face_swapper,face_enhancer"}).json()
    assert before["tokens_held"] == 30
    assert after["tokens_held"] == 3 * (10 + 7)
    assert after["price_lines"][1] == {"operation": "enhance.video", "version": 2, "tokens_per_unit": 7}


# --- refusals: each its own code, nothing held or stored --------------------------------------------------------


@pytest.fixture
def limited_client(job_settings: Settings) -> Iterator[TestClient]:
    """An app whose videos may have at most 30 frames (the other bounds at their defaults)."""
    with TestClient(create_app(job_settings.model_copy(update={"video_max_frames": 30}))) as client:
        yield client


PLAYLIST = b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nhttp://169.254.169.254/latest/meta-data/\n#EXT-X-ENDLIST\n"
AVI_HEAD = b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(200)

REFUSALS: list[tuple[str, Callable[[dict[str, bytes]], bytes], str, dict[str, str], int, str]] = [
    ("playlist", lambda c: PLAYLIST, "application/vnd.apple.mpegurl", {}, 415, "unsupported_video_format"),
    ("avi", lambda c: AVI_HEAD, "video/x-msvideo", {}, 415, "unsupported_video_format"),
    ("external-data", lambda c: c["elsewhere"], MP4, {}, 415, "unsupported_video_format"),
    ("zero-length", lambda c: b"", MP4, {}, 422, "invalid_video"),
    ("truncated", lambda c: c["base"][: len(c["base"]) // 2], MP4, {}, 422, "invalid_video"),
    ("audio-only", lambda c: c["audio_only"], MP4, {}, 422, "no_video_stream"),
    ("100k-by-100k", lambda c: c["huge_frames"], MP4, {}, 413, "video_too_many_pixels"),
    ("ten-hours", lambda c: c["ten_hours"], MP4, {}, 422, "video_too_long"),
    ("100-fps", lambda c: c["fast"], MP4, {}, 422, "video_frame_rate_too_high"),
    ("too-many-frames", lambda c: c["many_frames"], MP4, {}, 422, "video_too_many_frames"),
    ("trim-past-the-end", lambda c: c["base"], MP4, {"trim_start": "5"}, 422, "invalid_trim"),
    ("trim-backwards", lambda c: c["base"], MP4, {"trim_start": "1.5", "trim_end": "1"}, 422, "invalid_trim"),
]


@pytest.mark.parametrize(
    ("name", "video", "content_type", "data", "status", "code"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_every_probe_refusal_is_its_own_4xx_and_holds_nothing(
    name: str,
    video: Callable[[dict[str, bytes]], bytes],
    content_type: str,
    data: dict[str, str],
    status: int,
    code: str,
    limited_client: TestClient,
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    job_settings: Settings,
    clips: dict[str, bytes],
) -> None:
    payer = make_payer(100)
    response = send_video(limited_client, payer, video(clips), content_type=content_type, data=data)
    body = problem(response, status, code)
    assert body["title"]
    assert body["detail"]
    assert_nothing_recorded(engine, payer, job_settings, 100)


def test_a_video_is_only_ever_the_target(
    job_client: TestClient, make_payer: Callable[..., Payer], engine: DbEngine, job_settings: Settings, clips: Any
) -> None:
    payer = make_payer(100)
    response = job_client.post(
        "/v1/swaps",
        headers={**payer.headers, "Idempotency-Key": "video-as-source"},
        files={"source": ("s.mp4", clips["base"], MP4), "target": ("t.png", TARGET, "image/png")},
    )
    body = problem(response, 415, "unsupported_image_format")
    assert body["field"] == "source"
    assert "video" in body["detail"]
    assert_nothing_recorded(engine, payer, job_settings, 100)


@pytest.mark.parametrize(
    ("data", "code", "field"),
    [
        ({"trim_start": "1"}, "invalid_swap_request", "trim_start"),
        ({"trim_end": "1"}, "invalid_swap_request", "trim_end"),
        ({"crf": "20"}, "invalid_swap_request", "crf"),
        ({"progress_webhooks": "true"}, "invalid_swap_request", "progress_webhooks"),
        ({"output_format": "mp4"}, "invalid_output_format", None),
    ],
)
def test_video_options_on_an_image_are_refused(
    data: dict[str, str],
    code: str,
    field: str | None,
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    job_settings: Settings,
) -> None:
    payer = make_payer(5)
    body = problem(submit(job_client, payer, data=data), 422, code)
    if field is not None:
        assert body["field"] == field
    assert_nothing_recorded(engine, payer, job_settings, 5)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"output_format": "png"}, "invalid_output_format"),
        ({"output_format": "webm"}, "invalid_output_format"),
        ({"progress_webhooks": "true"}, "invalid_swap_request"),  # needs a webhook_url
        ({"crf": "52"}, "validation_error"),
        ({"trim_start": "-1"}, "validation_error"),
        ({"trim_end": "nan"}, "validation_error"),
        ({"processors": "face_enhancer"}, "invalid_processors"),
        ({"processors": "face_swapper,frame_colorizer"}, "invalid_processors"),
    ],
)
def test_invalid_video_options_are_refused(
    data: dict[str, str],
    code: str,
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    job_settings: Settings,
    clips: dict[str, bytes],
) -> None:
    payer = make_payer(100)
    problem(send_video(job_client, payer, clips["base"], data=data), 422, code)
    assert_nothing_recorded(engine, payer, job_settings, 100)


def test_mp4_is_accepted_as_a_video_output_format(
    job_client: TestClient, make_payer: Callable[..., Payer], clips: dict[str, bytes]
) -> None:
    response = send_video(job_client, make_payer(100), clips["base"], data={"output_format": "MP4"})
    assert response.status_code == 202, response.text


# --- idempotency ---------------------------------------------------------------------------------------------


def test_the_same_key_and_video_replays_and_anything_else_is_409(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    job_settings: Settings,
    clips: dict[str, bytes],
) -> None:
    payer = make_payer(100)
    first = send_video(job_client, payer, clips["base"], key="video-key", data={"trim_end": "2"})
    assert first.status_code == 202, first.text
    again = send_video(job_client, payer, clips["base"], key="video-key", data={"trim_end": "2"})
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    for data, video in (({"trim_end": "1"}, clips["base"]), ({"trim_end": "2"}, clips["other"]), ({}, clips["base"])):
        problem(send_video(job_client, payer, video, key="video-key", data=data), 409, "idempotency_key_reused")
    assert counts(engine, payer.user_id) == (1, 1)
    assert balance(engine, payer.account_id) == (100, 20)
    # Only the first request's input is kept: each replay's and refusal's upload is gone.
    assert [p.parent.name for p in stored_paths(job_settings) if p.name == "target"] == [first.json()["id"]]


# --- an oversized video, refused while it streams -------------------------------------------------------------

MB = 1024 * 1024


@pytest.fixture
def small_video_server(job_settings: Settings) -> Iterator[tuple[str, Settings]]:
    settings = job_settings.model_copy(update={"max_video_bytes": MB})
    with serving(create_app(settings)) as url:
        yield url, settings


def test_an_oversized_video_is_refused_as_it_streams(
    small_video_server: tuple[str, Settings],
    make_payer: Callable[..., Payer],
    engine: DbEngine,
    clips: dict[str, bytes],
) -> None:
    """A target that is a video (its first bytes say so) and never ends: refused once it passes max_video_bytes,
    long before the 64 MiB the client would send, and its partial file removed."""
    url, settings = small_video_server
    payer = make_payer(100)
    port = int(url.rsplit(":", 1)[1])
    total = 64 * MB
    opening = (
        b'--xyz\r\nContent-Disposition: form-data; name="target"; filename="t.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
        + clips["base"][:4096]
    )
    status, answer, sent = _stream(port, payer.headers, opening, total=total)
    assert status == 413, answer[:300]
    assert b"video_too_large" in answer
    assert sent < 8 * MB, f"the client got {sent} bytes out for a 1 MiB limit"
    assert counts(engine, payer.user_id) == (0, 0)
    assert balance(engine, payer.account_id) == (100, 0)
    assert stored_paths(settings) == []


def _stream(port: int, headers: dict[str, str], opening: bytes, *, total: int) -> tuple[int | None, bytes, int]:
    """POST /v1/swaps chunked: `opening`, then zeros until `total` bytes or the server answers or hangs up."""
    head = [
        "POST /v1/swaps HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: multipart/form-data; boundary=xyz",
        "Transfer-Encoding: chunked",
        "Idempotency-Key: oversized-video",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    chunk_size = 64 * 1024
    pending = f"{len(opening):x}\r\n".encode() + opening + b"\r\n"
    chunk = f"{chunk_size:x}\r\n".encode() + bytes(chunk_size) + b"\r\n"
    sent, received = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, chunk_size)
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        conn.setblocking(False)
        deadline = time.monotonic() + 60
        while sent < total and time.monotonic() < deadline and b"\r\n\r\n" not in received:
            try:
                part = conn.recv(65536)
                if not part:
                    break
                received += part
                continue
            except BlockingIOError:
                pass
            pending = pending or chunk
            try:
                written = conn.send(pending)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += written
            pending = pending[written:]
        conn.setblocking(True)
        conn.settimeout(10)
        try:
            while b"\r\n\r\n" not in received or len(received) < received.index(b"\r\n\r\n") + 50:
                part = conn.recv(65536)
                if not part:
                    break
                received += part
        except (TimeoutError, ConnectionResetError):
            pass
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else None
    return status, received, sent


# --- downloads -----------------------------------------------------------------------------------------------


def finish_video(
    sessions: sessionmaker[Session], settings: Settings, public_id: str, result: bytes, *, cancel_at: int | None = None
) -> None:
    """Settle a submitted video as its worker would (the service's own transitions): claimed, its result stored,
    then completed, or (`cancel_at` frames done) canceled with the part processed kept."""
    storage = make_storage(settings)
    with unit_of_work(sessions) as session:
        job = jobs.claim(session, public_id=public_id, worker_id="test-worker")
        assert job is not None
    key = attempt_result_key(public_id, 1, "mp4")
    storage.put(key, result)
    with unit_of_work(sessions) as session:
        if cancel_at is None:
            done = jobs.complete(
                session,
                job_id=job.id,
                attempt=1,
                result_location=key,
                content_type=MP4,
                size_bytes=len(result),
                timings_ms={},
                result_ttl_seconds=3600,
            )
        else:
            jobs.cancel(session, job=job)
            done = jobs.cancel_with_partial_result(
                session,
                job_id=job.id,
                attempt=1,
                seconds=1,
                frames_done=cancel_at,
                frames_total=job.options["probe"]["frame_count"],
                result_location=key,
                content_type=MP4,
                size_bytes=len(result),
                timings_ms={},
                result_ttl_seconds=3600,
            )
        assert done is not None


@pytest.fixture
def finished_video(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session_factory: sessionmaker[Session],
    job_settings: Settings,
    clips: dict[str, bytes],
) -> tuple[Payer, str, bytes]:
    payer = make_payer(100)
    job = send_video(job_client, payer, clips["base"]).json()
    result = clips["other"]  # any playable MP4 stands for the worker's output here
    finish_video(session_factory, job_settings, job["id"], result)
    return payer, job["id"], result


def test_a_video_result_downloads_whole_with_accept_ranges(
    job_client: TestClient, finished_video: tuple[Payer, str, bytes]
) -> None:
    payer, public_id, result = finished_video
    response = job_client.get(f"/v1/jobs/{public_id}/result", headers=payer.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == MP4
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(result))
    assert response.headers["content-disposition"] == f'attachment; filename="{public_id}.mp4"'
    assert response.content == result


@pytest.mark.parametrize(
    ("ranges", "pieces"),
    [
        ("bytes=0-99", [(0, 100)]),
        ("bytes=100-", [(100, None)]),
        ("bytes=-50", [(-50, None)]),
        ("bytes=10-19999999", [(10, None)]),  # an end past the file is the end
    ],
)
def test_a_single_range_is_206_with_content_range(
    ranges: str,
    pieces: list[tuple[int, int | None]],
    job_client: TestClient,
    finished_video: tuple[Payer, str, bytes],
) -> None:
    payer, public_id, result = finished_video
    response = job_client.get(f"/v1/jobs/{public_id}/result", headers={**payer.headers, "Range": ranges})
    assert response.status_code == 206, response.text
    start, end = pieces[0]
    expected = result[start:end] if end is not None else result[start:]
    first = start if start >= 0 else len(result) + start
    assert response.content == expected
    assert response.headers["content-range"] == f"bytes {first}-{first + len(expected) - 1}/{len(result)}"
    assert response.headers["content-length"] == str(len(expected))


def test_several_ranges_are_one_multipart_byteranges_answer(
    job_client: TestClient, finished_video: tuple[Payer, str, bytes]
) -> None:
    payer, public_id, result = finished_video
    response = job_client.get(f"/v1/jobs/{public_id}/result", headers={**payer.headers, "Range": "bytes=0-9, 100-109"})
    assert response.status_code == 206
    assert response.headers["content-type"].startswith("multipart/byteranges; boundary=")
    body = response.content
    for start in (0, 100):
        assert f"Content-Range: bytes {start}-{start + 9}/{len(result)}".encode() in body
        assert result[start : start + 10] in body


def test_a_range_past_the_end_is_a_416_problem(
    job_client: TestClient, finished_video: tuple[Payer, str, bytes]
) -> None:
    payer, public_id, result = finished_video
    response = job_client.get(
        f"/v1/jobs/{public_id}/result", headers={**payer.headers, "Range": f"bytes={len(result)}-"}
    )
    body = problem(response, 416, "range_not_satisfiable")
    assert response.headers["content-range"] == f"bytes */{len(result)}"
    assert body["size_bytes"] == len(result)


def test_a_malformed_range_is_ignored(job_client: TestClient, finished_video: tuple[Payer, str, bytes]) -> None:
    payer, public_id, result = finished_video
    response = job_client.get(f"/v1/jobs/{public_id}/result", headers={**payer.headers, "Range": "bytes=abc"})
    assert response.status_code == 200
    assert response.content == result


def test_head_is_not_offered(job_client: TestClient, finished_video: tuple[Payer, str, bytes]) -> None:
    """GET only (as every API route): players ask for ranges with GET."""
    payer, public_id, _ = finished_video
    response = job_client.head(f"/v1/jobs/{public_id}/result", headers=payer.headers)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


def test_a_deleted_video_result_is_gone(job_client: TestClient, finished_video: tuple[Payer, str, bytes]) -> None:
    payer, public_id, _ = finished_video
    assert job_client.delete(f"/v1/jobs/{public_id}", headers=payer.headers).status_code == 200
    problem(job_client.get(f"/v1/jobs/{public_id}/result", headers=payer.headers), 410, "result_gone")


def test_a_video_canceled_while_running_keeps_its_partial_result(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session_factory: sessionmaker[Session],
    job_settings: Settings,
    engine: DbEngine,
    clips: dict[str, bytes],
    staff_headers: dict[str, str],
) -> None:
    payer = make_payer(100)
    job = send_video(job_client, payer, clips["base"]).json()
    partial = clips["mov"]
    finish_video(session_factory, job_settings, job["id"], partial, cancel_at=8)
    read = job_client.get(f"/v1/jobs/{job['id']}", headers=payer.headers).json()
    assert (read["status"], read["tokens_captured"]) == ("canceled", 10)
    assert read["result_url"] == f"/v1/jobs/{job['id']}/result"
    assert read["progress"]["frames_done"] == 8
    assert balance(engine, payer.account_id) == (90, 0)
    response = job_client.get(read["result_url"], headers={**payer.headers, "Range": "bytes=0-15"})
    assert response.status_code == 206
    assert response.content == partial[:16]
    # Staff see it in the admin read, without a thumbnail (a video has none) ...
    admin = job_client.get(f"/admin/v1/jobs/{job['id']}", headers=staff_headers).json()
    assert admin["result_content_type"] == MP4
    assert admin["thumbnail_url"] is None
    # ... and asking for one anyway is a clear 404, never an attempt to decode the MP4 as an image.
    problem(job_client.get(f"/admin/v1/jobs/{job['id']}/thumbnail", headers=staff_headers), 404, "thumbnail_not_found")


def test_usage_counts_what_a_canceled_video_was_charged(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session_factory: sessionmaker[Session],
    job_settings: Settings,
    clips: dict[str, bytes],
) -> None:
    payer = make_payer(100)
    job = send_video(job_client, payer, clips["base"]).json()
    finish_video(session_factory, job_settings, job["id"], clips["mov"], cancel_at=5)
    usage = job_client.get("/v1/usage", headers=payer.headers).json()
    assert [(i["operation"], i["jobs"], i["tokens"]) for i in usage["items"]] == [("swap.video", 1, 10)]


def test_a_video_the_worker_swapped_downloads_by_ranges(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    engine: DbEngine,
    clips: dict[str, bytes],
) -> None:
    """End to end with the in-process worker: the MP4 it encoded, whole and in pieces as a player asks for it."""
    payer = make_payer(100)
    job = send_video(job_client, payer, clips["base"], data={"trim_end": "1.5"}).json()
    drain()
    assert job_row(engine, job["id"]).status == "succeeded"
    whole = job_client.get(f"/v1/jobs/{job['id']}/result", headers=payer.headers)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == MP4
    assert whole.content[4:8] == b"ftyp"
    assert balance(engine, payer.account_id) == (80, 0)  # 1.5 s: 2 started seconds at 10
    size = len(whole.content)
    pieces = [
        job_client.get(
            f"/v1/jobs/{job['id']}/result", headers={**payer.headers, "Range": f"bytes={start}-{start + 999}"}
        )
        for start in range(0, size, 1000)
    ]
    assert all(piece.status_code == 206 for piece in pieces)
    assert b"".join(piece.content for piece in pieces) == whole.content


def test_no_transaction_is_held_while_a_video_streams_in(
    small_video_server: tuple[str, Settings], make_payer: Callable[..., Payer], engine: DbEngine, clips: Any
) -> None:
    """Authenticating the caller reads (and may stamp its key's last use) in a transaction: it commits before the
    body is read, so a slow upload (minutes, for a video) holds no connection idle in a transaction, nor a lock."""
    url, settings = small_video_server
    payer = make_payer(100)
    port = int(url.rsplit(":", 1)[1])
    head = "\r\n".join(
        [
            "POST /v1/swaps HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Content-Type: multipart/form-data; boundary=xyz",
            "Transfer-Encoding: chunked",
            "Idempotency-Key: slow-video",
            *(f"{k}: {v}" for k, v in payer.headers.items()),
        ]
    )
    opening = (
        b'--xyz\r\nContent-Disposition: form-data; name="target"; filename="t.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
        + clips["base"][:2048]
    )
    idle_in_transaction = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall((head + "\r\n\r\n").encode() + f"{len(opening):x}\r\n".encode() + opening + b"\r\n")
        time.sleep(1.0)  # the server has authenticated the caller and is waiting for more of the body
        with engine.connect() as db:
            assert db.exec_driver_sql(idle_in_transaction).scalar_one() == 0
    # The client left mid-upload: what it sent is removed, and nothing was held.
    wait_for(lambda: stored_paths(settings) == [], timeout=10)
    assert counts(engine, payer.user_id) == (0, 0)
