"""A video job with storage encrypted at rest (local disk): the upload and the result are stored as ciphertext, and
the API serves the result decrypted, whole and by single ranges (only the chunks covering a range are decrypted)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from facemint.config import Settings
from facemint.storage_crypto import MAGIC
from tests.conftest import make_settings
from tests.jobs.conftest import MP4, Payer, send_video
from tests.jobs.test_video_downloads import finish_video


@pytest.fixture
def job_settings(database_url: str, redis_url: str, models_dir: Path, tmp_path: Path) -> Settings:
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
    )


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

    storage_root = job_settings.resolved_storage_dir
    stored = {p.relative_to(storage_root).as_posix(): p.read_bytes() for p in storage_root.rglob("*") if p.is_file()}
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
