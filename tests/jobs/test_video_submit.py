"""POST /v1/swaps with a video target: the price and hold per started second (trims and the enhancer's line
included), what the job records and reads back, every probe refusal as its own 4xx with nothing held or left
stored, an oversized video refused while it streams (holding no transaction meanwhile), replays, the options only a
video takes (downloads: test_video_downloads.py)."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy.engine import Engine as DbEngine

from facemint.app import create_app
from facemint.auth.service import LAST_USED_KEY
from facemint.config import Settings
from facemint.jobs import service as jobs
from tests.jobs.conftest import (
    MP4,
    TARGET,
    Payer,
    balance,
    counts,
    execute,
    hold_row,
    job_row,
    problem,
    send_video,
    serving,
    submit,
    wait_for,
)


def stored_paths(settings: Settings) -> list[Path]:
    """Everything under the storage's inputs (files and folders): a refused upload leaves nothing, not even a folder."""
    root = settings.resolved_storage_dir / "inputs"
    try:
        return sorted(root.rglob("*")) if root.exists() else []
    except FileNotFoundError:  # a folder the server removed while it was being listed: not empty yet, look again
        return [root]


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
    # The server has authenticated the caller once it has recorded the key's last use in Redis (facemint.auth.service;
    # the database copy is written at most once a minute per key id, and other tests' databases share this Redis).
    with engine.connect() as db:
        key_id = db.exec_driver_sql(f"SELECT id FROM api_keys WHERE user_id = {int(payer.user_id)}").scalar_one()
    last_used = Redis.from_url(settings.redis_url)
    started = int(time.time())

    def authenticated() -> bool:
        return int(last_used.get(LAST_USED_KEY.format(key_id)) or 0) >= started

    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall((head + "\r\n\r\n").encode() + f"{len(opening):x}\r\n".encode() + opening + b"\r\n")
        with engine.connect() as db:
            # Waited for, not slept on: on a loaded machine the server may take more than a second to get there.
            wait_for(authenticated, timeout=20)
            time.sleep(0.5)  # the server is waiting for more of the body
            assert db.exec_driver_sql(idle_in_transaction).scalar_one() == 0
    # The client left mid-upload: what it sent is removed, and nothing was held.
    wait_for(lambda: stored_paths(settings) == [], timeout=10)
    assert counts(engine, payer.user_id) == (0, 0)
