"""What a crash leaves while staging is removed once older than any job may run, on local disk and on S3 (SeaweedFS
on loopback): staged and temporary files, downloads for the decoder, and multipart uploads never completed; what is
younger, and every stored object, stays."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from facemint.config import Settings
from facemint.jobs import files
from facemint.storage import LocalStorage
from facemint.storage_crypto import EncryptedStorage, Keyring
from facemint.storage_s3 import S3Storage
from tests.storage_servers import S3Server, s3_storage

MIB = 1024 * 1024
HOUR = 3600.0


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_local_staged_and_temporary_files_go_once_old_and_objects_stay(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("results/job_ab12-a1.mp4", b"a stored result")
    _age(tmp_path / "results/job_ab12-a1.mp4", 10 * HOUR)
    storage.staging_path("results/job_ab12-a2.mp4").write_bytes(b"an encode killed midway")
    storage.staging_path("results/job_ab12-a1.mp4.sealed").write_bytes(b"sealed by a worker killed midway")
    (tmp_path / "results/.part-x1y2").write_bytes(b"a put killed midway")
    storage.staging_path("inputs/job_cd34/target").write_bytes(b"an upload in progress")
    for name in ("results/job_ab12-a2.mp4.staging", "results/job_ab12-a1.mp4.sealed.staging", "results/.part-x1y2"):
        _age(tmp_path / name, 10 * HOUR)

    assert storage.clear_stale_staging(time.time() - HOUR) == 3
    assert _files(tmp_path) == ["inputs/job_cd34/target.staging", "results/job_ab12-a1.mp4"]
    assert storage.clear_stale_staging(time.time() - HOUR) == 0


@pytest.fixture
def storage(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Storage:
    return s3_storage(s3_server, monkeypatch, tmp_path / "staging")


def _uploads(storage: S3Storage) -> list[str]:
    listed = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.prefix)
    return sorted(upload["Key"][len(storage.prefix) :] for upload in listed.get("Uploads", []))


def _start_upload(storage: S3Storage, key: str) -> None:
    """What a process killed mid-upload leaves: a multipart upload with a part sent and never completed."""
    started = storage.client.create_multipart_upload(Bucket=storage.bucket, Key=storage.prefix + key)
    storage.client.upload_part(
        Bucket=storage.bucket, Key=storage.prefix + key, UploadId=started["UploadId"], PartNumber=1, Body=b"x" * MIB
    )


def test_s3_staged_files_downloads_and_unfinished_uploads_go_once_old(storage: S3Storage) -> None:
    storage.put("results/job_ab12-a1.mp4", b"a stored result")
    storage.staging_path("results/job_ab12-a2.mp4").write_bytes(b"an encode killed midway")
    storage.staging_path("inputs/job_cd34/target").write_bytes(b"an upload killed midway")
    (storage.staging_dir / "downloads/inputs~job_cd34~target.a1b2c3").write_bytes(b"a download left by a crash")
    legacy = storage.staging_dir / "inputs/job_ef56"  # the per-key folders staging made before
    legacy.mkdir(parents=True)
    (legacy / "target").write_bytes(b"old layout")
    _start_upload(storage, "results/job_ab12-a3.mp4")
    _start_upload(storage, "inputs/job_cd34/target")
    _start_upload(storage, "elsewhere/not-ours.bin")  # outside the service's folders: never touched
    for path in storage.staging_dir.rglob("*"):
        _age(path, 10 * HOUR)

    assert storage.clear_stale_staging(time.time() - 20 * HOUR) == 0  # nothing is that old
    assert _uploads(storage) == ["elsewhere/not-ours.bin", "inputs/job_cd34/target", "results/job_ab12-a3.mp4"]
    storage.staging_path("results/job_ab12-a4.mp4").write_bytes(b"being encoded now")

    assert storage.clear_stale_staging(time.time() - 5 * HOUR) == 4  # the aged files, not the uploads (just begun)
    # A bound in the future: everything older than it is stale.
    assert storage.clear_stale_staging(time.time() + 60) == 3  # the fresh staged file and our two uploads
    assert _files(storage.staging_dir) == []
    assert not legacy.exists()
    assert (storage.staging_dir / "downloads").is_dir()
    assert _uploads(storage) == ["elsewhere/not-ours.bin"]
    assert storage.get("results/job_ab12-a1.mp4") == b"a stored result"


def test_encrypted_storage_clears_its_backends_staging(storage: S3Storage) -> None:
    encrypted = EncryptedStorage(storage, Keyring({"a": bytes(32)}, "a"))
    encrypted.staging_path("results/job_ab12-a1.mp4.sealed").write_bytes(b"sealed by a worker killed midway")
    _start_upload(storage, "results/job_ab12-a1.mp4")
    assert encrypted.clear_stale_staging(time.time() + 60) == 2
    assert _uploads(storage) == []


def test_the_bound_is_longer_than_any_job_may_run(storage: S3Storage, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, job_deadline_seconds=900, orphan_file_grace_seconds=HOUR)
    longest_video = settings.video_deadline_seconds_per_second * settings.video_max_duration_seconds
    assert settings.staging_grace_seconds() == 900 + longest_video + HOUR
    _start_upload(storage, "results/job_ab12-a1.mp4")
    staged = storage.staging_path("inputs/job_cd34/target")
    staged.write_bytes(b"an upload killed midway")
    _age(staged, settings.staging_grace_seconds() - 60)

    assert files.clear_stale_staging(storage, settings) == 0
    later = time.time() + settings.staging_grace_seconds() + 1
    assert files.clear_stale_staging(storage, settings, now=later) == 2
    assert _uploads(storage) == []
    assert not staged.exists()
