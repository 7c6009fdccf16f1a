"""S3Storage against a real S3 server (SeaweedFS on loopback): round trips, multipart uploads streamed from a staged
file, missing objects, ranged reads and presigned URLs; credentials from the environment as boto3 finds them."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest

from facemint.config import Settings
from facemint.storage import LocalStorage, ObjectMissing, RangeNotSatisfiable, RemoteStorage, make_storage
from facemint.storage_s3 import S3Storage
from tests.storage_servers import S3Server, use_s3

MIB = 1024 * 1024


@pytest.fixture
def storage(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Storage:
    prefix = use_s3(s3_server, monkeypatch)
    return S3Storage(
        bucket=s3_server.bucket,
        prefix=prefix,
        staging_dir=tmp_path / "staging",
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
        multipart_threshold=5 * MIB,  # S3's smallest part
    )


def test_objects_round_trip_and_list_under_their_folder(storage: S3Storage) -> None:
    before = time.time()
    storage.put("inputs/job_ab12/source", b"source bytes")
    storage.put("inputs/job_ab12/target", b"target bytes", durable=False)
    storage.put("results/job_ab12-a1.png", b"png")
    assert storage.get("inputs/job_ab12/source") == b"source bytes"
    assert storage.path("inputs/job_ab12/source") is None  # no local files: results stream or redirect
    listed = sorted(storage.list("inputs"), key=lambda stored: stored.key)
    assert [stored.key for stored in listed] == ["inputs/job_ab12/source", "inputs/job_ab12/target"]
    assert all(before - 5 <= stored.modified_at <= time.time() + 5 for stored in listed)
    assert [stored.key for stored in storage.list("results/")] == ["results/job_ab12-a1.png"]


def test_deleting_a_prefix_removes_every_object_under_it_and_no_other(storage: S3Storage) -> None:
    for index in range(1005):  # more than one DeleteObjects batch
        storage.put(f"inputs/job_many/part{index}", b"x", durable=False)
    storage.put("inputs/job_many2/source", b"neighbour")  # shares the text prefix, not the folder
    storage.delete_prefix("inputs/job_many")
    assert list(storage.list("inputs/job_many")) == []
    assert storage.get("inputs/job_many2/source") == b"neighbour"
    storage.delete_prefix("inputs/job_never")  # nothing there: fine


def test_a_staged_upload_never_sent_goes_with_its_prefix(storage: S3Storage) -> None:
    """A refused video upload is staged locally and never reaches the bucket: the submit's clean-up removes it."""
    staged = storage.staging_path("inputs/job_ab12/target")
    staged.write_bytes(b"half an upload")
    storage.delete_prefix("inputs/job_ab12")
    assert not staged.exists()
    result = storage.staging_path("results/job_ab12-a1.mp4")
    result.write_bytes(b"encoded")
    storage.delete("results/job_ab12-a1.mp4")
    assert not result.exists()


def test_deleting_an_object_twice_succeeds(storage: S3Storage) -> None:
    storage.put("results/job_ab12-a1.png", b"png")
    storage.delete("results/job_ab12-a1.png")
    storage.delete("results/job_ab12-a1.png")
    with pytest.raises(ObjectMissing):
        storage.get("results/job_ab12-a1.png")


def test_a_missing_object_raises_object_missing_everywhere(storage: S3Storage) -> None:
    with pytest.raises(ObjectMissing):
        storage.get("inputs/job_gone/source")
    with pytest.raises(ObjectMissing), storage.local_copy("inputs/job_gone/target"):
        pass
    with pytest.raises(ObjectMissing):
        storage.open_range("results/job_gone-a1.mp4", "bytes=0-9")
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.get("../escape")


def test_a_large_staged_file_is_uploaded_in_parts_and_removed(storage: S3Storage) -> None:
    staged = storage.staging_path("results/job_ab12-a1.mp4")
    assert staged.is_relative_to(storage.staging_dir)
    data = os.urandom(12 * MIB + 123)  # three parts at the 5 MiB threshold
    staged.write_bytes(data)
    storage.put_file("results/job_ab12-a1.mp4", staged)
    assert not staged.exists()
    head = storage.client.head_object(Bucket=storage.bucket, Key=storage.prefix + "results/job_ab12-a1.mp4")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag names its part count
    with storage.local_copy("results/job_ab12-a1.mp4") as copy:
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not copy.exists()


def test_ranged_reads_return_the_bytes_asked_for(storage: S3Storage) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    storage.put("results/job_ab12-a1.mp4", data)
    read = storage.open_range("results/job_ab12-a1.mp4", "bytes=100-199")
    assert (read.first, read.last, read.size, read.partial) == (100, 199, len(data), True)
    assert b"".join(read.chunks) == data[100:200]
    read.close()
    tail = storage.open_range("results/job_ab12-a1.mp4", "bytes=-16")
    assert b"".join(tail.chunks) == data[-16:]
    assert (tail.first, tail.last) == (len(data) - 16, len(data) - 1)
    whole = storage.open_range("results/job_ab12-a1.mp4")
    assert (whole.partial, whole.size) == (False, len(data))
    assert b"".join(whole.chunks) == data
    with pytest.raises(RangeNotSatisfiable) as refused:
        storage.open_range("results/job_ab12-a1.mp4", "bytes=20000-")
    assert refused.value.size == len(data)


def test_a_presigned_url_serves_the_object_without_credentials_until_it_expires(storage: S3Storage) -> None:
    storage.put("results/job_ab12-a1.png", b"the result")
    url = storage.presigned_url("results/job_ab12-a1.png", 60, filename="job_ab12.png")
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"the result"
    short = storage.presigned_url("results/job_ab12-a1.png", 1)
    time.sleep(2.1)
    assert httpx.get(short).status_code == 403


def test_the_settings_choose_the_backend(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prefix = use_s3(s3_server, monkeypatch)
    assert isinstance(make_storage(Settings(data_dir=tmp_path)), LocalStorage)
    chosen = make_storage(
        Settings(
            data_dir=tmp_path,
            storage_backend="s3",
            s3_bucket=s3_server.bucket,
            s3_prefix=prefix,
            s3_endpoint_url=s3_server.endpoint_url,
            s3_region=s3_server.region,
        )
    )
    assert isinstance(chosen, S3Storage)
    with pytest.raises(ValueError, match="FACEMINT_S3_BUCKET"):
        Settings(data_dir=tmp_path, storage_backend="s3")
    assert isinstance(chosen, RemoteStorage)
    assert chosen.staging_path("inputs/job_ab12/target") == tmp_path / "staging/inputs~job_ab12~target"
    chosen.put("inputs/job_ab12/source", b"signed with the environment's key")
    assert chosen.get("inputs/job_ab12/source") == b"signed with the environment's key"
