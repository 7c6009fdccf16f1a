"""Video jobs with storage encrypted at rest, on local disk and on S3 (SeaweedFS on loopback): the upload and the
result are stored as ciphertext, the worker decodes the input and stores its result through the encryption, and the
API serves the result decrypted, whole and by single ranges (only the chunks covering a range are decrypted)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from facemint.config import Settings
from facemint.storage import make_storage
from facemint.storage_crypto import MAGIC, EncryptedStorage
from tests.conftest import make_settings
from tests.jobs.conftest import MP4, Payer, job_row, send_video
from tests.jobs.test_video_downloads import finish_video
from tests.jobs.video_job_helpers import accepted_video, clip_bytes, mp4_frames
from tests.storage_servers import S3Server, use_s3


@pytest.fixture(params=["local", "s3"])
def job_settings(
    request: pytest.FixtureRequest,
    database_url: str,
    redis_url: str,
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    backend: dict[str, Any] = {}
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        backend = {
            "storage_backend": "s3",
            "s3_bucket": server.bucket,
            "s3_prefix": use_s3(server, monkeypatch),
            "s3_endpoint_url": server.endpoint_url,
            "s3_region": server.region,
            "s3_multipart_threshold_bytes": 5 * 1024 * 1024,
        }
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        engine_provider="cpu",
        queue_name=f"swaps-{os.getpid()}",
        plan_limits={"free": {"key": "100000/minute", "tenant": "100000/minute"}},
        storage_encryption_keys={"k1": base64.b64encode(os.urandom(32)).decode()},
        storage_encryption_key_id="k1",
        **backend,
    )


def _stored(settings: Settings) -> dict[str, bytes]:
    """Every object the backend holds, as stored (ciphertext), by key."""
    storage = make_storage(settings)
    assert isinstance(storage, EncryptedStorage)
    keys = [stored.key for folder in ("inputs", "results") for stored in storage.inner.list(folder)]
    return {key: storage.inner.get(key) for key in keys}


def test_an_encrypted_video_result_downloads_whole_and_by_range(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    session_factory: sessionmaker[Session],
    job_settings: Settings,
    clips: dict[str, bytes],
) -> None:
    payer = make_payer(100)
    job = send_video(job_client, payer, clips["base"]).json()
    result = clips["other"]
    finish_video(session_factory, job_settings, job["id"], result)

    stored = _stored(job_settings)
    assert any(key.startswith("inputs/") for key in stored)
    assert any(key.startswith("results/") for key in stored)
    for key, data in stored.items():
        assert data.startswith(MAGIC), key  # the upload and the result alike

    url = f"/v1/jobs/{job['id']}/result"
    whole = job_client.get(url, headers=payer.headers)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == MP4
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(len(result))
    assert whole.content == result

    ranged = job_client.get(url, headers={**payer.headers, "Range": "bytes=100-70099"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 100-{min(70099, len(result) - 1)}/{len(result)}"
    assert ranged.content == result[100:70100]

    past_end = job_client.get(url, headers={**payer.headers, "Range": f"bytes={len(result)}-"})
    assert past_end.status_code == 416
    assert past_end.headers["content-range"] == f"bytes */{len(result)}"


def test_a_worker_runs_a_video_job_through_encrypted_storage(
    job_client: TestClient,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    job_settings: Settings,
    engine: DbEngine,
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    job_id = accepted_video(job_client, payer, clip_bytes(tmp_path, seconds=1))
    drain()  # the worker decodes the decrypted input (local_copy) and seals its result (put_file)
    done = job_client.get(f"/v1/jobs/{job_id}", headers=payer.headers).json()
    assert done["status"] == "succeeded", done
    result = job_client.get(done["result_url"], headers=payer.headers)
    assert result.status_code == 200
    assert int(result.headers["content-length"]) == done["result_size_bytes"] == len(result.content)
    frames, _, codec = mp4_frames(result.content)
    assert codec == "h264"
    assert frames > 0
    row = job_row(engine, job_id)
    stored = _stored(job_settings)
    assert list(stored) == [row.result_location]  # the inputs went with the finished job
    assert stored[row.result_location].startswith(MAGIC)
    # No plaintext left behind: the decrypted input and the staged result are removed after the run.
    staging = job_settings.data_dir / "staging"
    assert not staging.exists() or [p for p in staging.rglob("*") if p.is_file()] == []
    assert [p for p in job_settings.resolved_storage_dir.rglob("*.staging")] == []
