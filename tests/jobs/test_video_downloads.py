"""Video results: downloaded whole and by ranges as players ask (206, several ranges, 416, a malformed range
ignored, no HEAD), gone once deleted, kept for a video canceled while running, and counted in usage."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from facemint.config import Settings
from facemint.db import unit_of_work
from facemint.jobs import service as jobs
from facemint.jobs.files import attempt_result_key
from facemint.storage import make_storage
from tests.jobs.conftest import (
    MP4,
    Payer,
    balance,
    job_row,
    problem,
    send_video,
)

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
