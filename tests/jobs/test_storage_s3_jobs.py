"""A video job with its files in S3 (SeaweedFS on loopback): the submit streams the upload to a staging file and
uploads it, the in-process worker downloads the input and uploads its result in parts, and the API serves the
result streamed (whole, or one range passed on to S3) or as a 307 to a presigned URL. What a crash leaves in the
local staging folder is cleared by the sweeper and by the API process that staged it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine as DbEngine

from facemint.app import create_app
from facemint.config import Settings
from facemint.storage import make_storage
from facemint.storage_s3 import S3Storage
from tests.conftest import make_settings
from tests.jobs.conftest import Payer, job_row, wait_for
from tests.jobs.video_job_helpers import accepted_video, clip_bytes, mp4_frames
from tests.storage_servers import S3Server, use_s3


@pytest.fixture
def job_settings(
    database_url: str,
    redis_url: str,
    models_dir: Path,
    tmp_path: Path,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        engine_provider="cpu",
        queue_name=f"swaps-{os.getpid()}",
        plan_limits={"free": {"key": "100000/minute", "tenant": "100000/minute"}},
        storage_backend="s3",
        s3_bucket=s3_server.bucket,
        s3_prefix=use_s3(s3_server, monkeypatch),
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region=s3_server.region,
        s3_multipart_threshold_bytes=5 * 1024 * 1024,
    )


def test_a_video_job_on_s3_runs_and_its_result_streams_whole_and_by_range(
    job_app: FastAPI,
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    job_settings: Settings,
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=2, audio="aac"))
    drain()
    done = job_client.get(f"/v1/jobs/{job_id}", headers=payer.headers).json()
    assert done["status"] == "succeeded", done
    result = job_client.get(done["result_url"], headers=payer.headers)
    assert result.status_code == 200
    assert int(result.headers["content-length"]) == done["result_size_bytes"] == len(result.content)
    assert result.headers["content-type"] == "video/mp4"
    frames, _, codec = mp4_frames(result.content)
    assert codec == "h264"
    assert frames > 0
    ranged = job_client.get(done["result_url"], headers={**payer.headers, "Range": "bytes=10-109"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 10-109/{len(result.content)}"
    assert ranged.content == result.content[10:110]
    refused = job_client.get(done["result_url"], headers={**payer.headers, "Range": "bytes=99999999-"})
    assert refused.status_code == 416
    assert refused.headers["content-range"] == f"bytes */{len(result.content)}"
    # Only the result is left in the bucket, and no staging or downloaded file on the worker's disk.
    storage = S3Storage(
        bucket=job_settings.s3_bucket,
        prefix=job_settings.s3_prefix,
        staging_dir=job_settings.data_dir / "staging",
        endpoint_url=job_settings.s3_endpoint_url,
        region=job_settings.s3_region,
    )
    row = job_row(engine, job_id)
    assert [stored.key for stored in storage.list("inputs")] == []
    assert [stored.key for stored in storage.list("results")] == [row.result_location]
    assert [p for p in (job_settings.data_dir / "staging").rglob("*") if p.is_file()] == []

    job_app.state.settings = job_settings.model_copy(update={"storage_result_delivery": "presigned"})
    redirect = job_client.get(done["result_url"], headers=payer.headers, follow_redirects=False)
    assert redirect.status_code == 307
    assert httpx.get(redirect.headers["location"]).content == result.content


def _left_by_a_crash(settings: Settings) -> list[Path]:
    """A staged upload and a download a killed process left on this machine's disk, dated past the bound."""
    storage = make_storage(settings)
    left = [storage.staging_path("inputs/job_0123456789abcdef01234567/target")]
    left[0].write_bytes(b"half an upload")
    left.append(settings.data_dir / "staging/downloads/inputs~job_0123456789abcdef01234567~target.a1b2c3")
    left[1].write_bytes(b"a download for the decoder")
    then = time.time() - settings.staging_grace_seconds() - 60
    for path in left:
        os.utime(path, (then, then))
    return left


def test_the_sweeper_clears_what_a_crash_left_in_staging(job_settings: Settings, sweep: Callable[..., Any]) -> None:
    left = _left_by_a_crash(job_settings)
    fresh = make_storage(job_settings).staging_path("inputs/job_ffffffffffffffffffffffff/target")
    fresh.write_bytes(b"an upload arriving now")
    sweep(job_settings.model_copy(update={"orphan_sweep_interval_seconds": 0.001}))
    assert [path.exists() for path in left] == [False, False]
    assert fresh.exists()


def test_an_api_process_clears_its_own_staging(job_settings: Settings) -> None:
    """With S3 an API's uploads stage on its own disk, which no worker sweeps: the API clears it itself."""
    settings = job_settings.model_copy(update={"orphan_sweep_interval_seconds": 0.1})
    left = _left_by_a_crash(settings)
    with TestClient(create_app(settings)):
        wait_for(lambda: not any(path.exists() for path in left), timeout=10)
