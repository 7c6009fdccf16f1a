"""Encryption at rest (facemint.storage_crypto) over both real backends: local disk and S3 (SeaweedFS on loopback).
What is stored is ciphertext behind a header; reads are authenticated, so an altered, truncated or reordered object
or a wrong key is refused, never decrypted into wrong bytes; large files stream chunk by chunk; keys rotate by id."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from facemint.config import Settings
from facemint.storage import LocalStorage, RangeNotSatisfiable, RemoteStorage, make_storage
from facemint.storage_crypto import CHUNK_SIZE, MAGIC, EncryptedStorage, Keyring, ObjectUnreadable, parse_header
from facemint.storage_s3 import S3Storage
from tests.storage_servers import S3Server, use_s3

MIB = 1024 * 1024
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def _local(tmp_path: Path, keyring: Keyring) -> tuple[EncryptedStorage, LocalStorage]:
    inner = LocalStorage(tmp_path / "storage")
    return EncryptedStorage(inner, keyring), inner


@pytest.fixture
def s3_inner(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Storage:
    return S3Storage(
        bucket=s3_server.bucket,
        prefix=use_s3(s3_server, monkeypatch),
        staging_dir=tmp_path / "staging",
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
        multipart_threshold=5 * MIB,
    )


def _stored_file(storage: EncryptedStorage, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    staged = storage.staging_path("results/job_big.mp4")
    staged.write_bytes(data)
    return staged, data


def test_local_objects_are_ciphertext_on_disk_and_round_trip(tmp_path: Path) -> None:
    storage, inner = _local(tmp_path, Keyring({"a": KEY_A}, "a"))
    plaintext = b"swapped png bytes " * 100
    storage.put("results/job_ab12.png", plaintext)
    on_disk = (inner.root / "results/job_ab12.png").read_bytes()
    assert on_disk.startswith(MAGIC)
    assert plaintext[:18] not in on_disk
    assert parse_header(on_disk).key_id == "a"
    assert storage.get("results/job_ab12.png") == plaintext
    assert storage.path("results/job_ab12.png") is None  # never hands out the ciphertext as a file
    assert [item.key for item in storage.list("results")] == ["results/job_ab12.png"]
    storage.delete("results/job_ab12.png")
    assert list(storage.list("results")) == []


def test_s3_objects_are_ciphertext_in_the_bucket_and_round_trip(s3_inner: S3Storage) -> None:
    storage = EncryptedStorage(s3_inner, Keyring({"a": KEY_A}, "a"))
    storage.put("inputs/job_ab12/source", b"source bytes")
    raw = s3_inner.get("inputs/job_ab12/source")
    assert raw.startswith(MAGIC)
    assert b"source bytes" not in raw
    assert storage.get("inputs/job_ab12/source") == b"source bytes"


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_multi_megabyte_file_streams_through_put_file_and_local_copy(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    keyring = Keyring({"a": KEY_A}, "a")
    inner = LocalStorage(tmp_path / "storage") if backend == "local" else request.getfixturevalue("s3_inner")
    storage = EncryptedStorage(inner, keyring)
    staged, data = _stored_file(storage, 6 * MIB + 12345)  # many chunks, a short last one; multipart on S3
    storage.put_file("results/job_big.mp4", staged)
    assert not staged.exists()
    with storage.local_copy("results/job_big.mp4") as copy:
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not copy.exists()  # the decrypted copy is removed afterwards
    read = storage.open_range("results/job_big.mp4")
    assert b"".join(read.chunks) == data
    assert not read.partial


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_range_reads_decrypt_only_what_covers_the_range(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    inner = LocalStorage(tmp_path / "storage") if backend == "local" else request.getfixturevalue("s3_inner")
    storage = EncryptedStorage(inner, Keyring({"a": KEY_A}, "a"))
    assert isinstance(storage, RemoteStorage)  # so the API streams results through open_range
    staged, data = _stored_file(storage, 3 * CHUNK_SIZE + 100)
    storage.put_file("results/job_big.mp4", staged)
    for header, first, last in (
        (f"bytes={CHUNK_SIZE - 10}-{CHUNK_SIZE + 9}", CHUNK_SIZE - 10, CHUNK_SIZE + 9),  # across a chunk boundary
        ("bytes=5-5", 5, 5),
        (f"bytes={2 * CHUNK_SIZE}-", 2 * CHUNK_SIZE, len(data) - 1),
        ("bytes=-150", len(data) - 150, len(data) - 1),
        ("bytes=0-999999999", 0, len(data) - 1),
    ):
        read = storage.open_range("results/job_big.mp4", header)
        try:
            assert (read.first, read.last, read.size, read.partial) == (first, last, len(data), True)
            assert b"".join(read.chunks) == data[first : last + 1], header
        finally:
            read.close()
    with pytest.raises(RangeNotSatisfiable) as refused:
        storage.open_range("results/job_big.mp4", f"bytes={len(data)}-")
    assert refused.value.size == len(data)
    with pytest.raises(ValueError, match="ciphertext"):
        storage.presigned_url("results/job_big.mp4", 60)


def _chunked(tmp_path: Path) -> tuple[EncryptedStorage, Path, bytes]:
    storage, inner = _local(tmp_path, Keyring({"a": KEY_A}, "a"))
    staged, data = _stored_file(storage, 3 * CHUNK_SIZE + 7)
    storage.put_file("results/job_big.mp4", staged)
    return storage, inner.root / "results/job_big.mp4", data


def _all_reads_refused(storage: EncryptedStorage, match: str) -> None:
    with pytest.raises(ObjectUnreadable, match=match):
        storage.get("results/job_big.mp4")
    with pytest.raises(ObjectUnreadable, match=match), storage.local_copy("results/job_big.mp4"):
        pass
    with pytest.raises(ObjectUnreadable, match=match):
        b"".join(storage.open_range("results/job_big.mp4").chunks)


def test_a_flipped_byte_is_refused_never_decrypted(tmp_path: Path) -> None:
    storage, stored, _ = _chunked(tmp_path)
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(raw)
    _all_reads_refused(storage, "fails authentication")


def test_an_edited_header_is_refused(tmp_path: Path) -> None:
    storage, stored, _ = _chunked(tmp_path)
    raw = bytearray(stored.read_bytes())
    header = parse_header(bytes(raw))
    raw[len(header.raw) - 20] ^= 0x01  # inside the salt: the header is associated data of every chunk
    stored.write_bytes(raw)
    _all_reads_refused(storage, "fails authentication")


def test_a_truncated_object_is_refused(tmp_path: Path) -> None:
    storage, stored, _ = _chunked(tmp_path)
    raw = stored.read_bytes()
    header = parse_header(raw)
    stored.write_bytes(raw[: header.chunk_offset(2)])  # whole chunks dropped from the end
    _all_reads_refused(storage, "truncated")


def test_a_truncated_object_with_its_size_rewritten_is_refused(tmp_path: Path) -> None:
    # An attacker who also shortens the size in the header: the header is authenticated, and the last chunk kept
    # was not sealed as the final one.
    storage, stored, _ = _chunked(tmp_path)
    raw = stored.read_bytes()
    header = parse_header(raw)
    forged = bytearray(raw[: header.chunk_offset(2)])
    forged[len(header.raw) - 8 : len(header.raw)] = (2 * CHUNK_SIZE).to_bytes(8, "big")
    stored.write_bytes(forged)
    _all_reads_refused(storage, "fails authentication")


def test_swapped_chunks_are_refused(tmp_path: Path) -> None:
    storage, stored, _ = _chunked(tmp_path)
    raw = stored.read_bytes()
    header = parse_header(raw)
    first, second, third = (header.chunk_offset(i) for i in range(3))
    stored.write_bytes(raw[:first] + raw[second:third] + raw[first:second] + raw[third:])
    _all_reads_refused(storage, "chunk 0 of the object fails authentication")


def test_appended_bytes_are_refused(tmp_path: Path) -> None:
    storage, stored, _ = _chunked(tmp_path)
    stored.write_bytes(stored.read_bytes() + b"x")
    with pytest.raises(ObjectUnreadable, match="after its final chunk"):
        storage.get("results/job_big.mp4")


def test_a_wrong_key_or_an_unknown_key_id_is_refused(tmp_path: Path) -> None:
    storage, _, _ = _chunked(tmp_path)
    wrong = EncryptedStorage(storage.inner, Keyring({"a": KEY_B}, "a"))
    _all_reads_refused(wrong, "fails authentication")
    unknown = EncryptedStorage(storage.inner, Keyring({"b": KEY_B}, "b"))
    _all_reads_refused(unknown, "key id 'a', which is not configured")


def test_a_rotated_key_seals_new_objects_and_old_ones_stay_readable(tmp_path: Path) -> None:
    before, inner = _local(tmp_path, Keyring({"2026-01": KEY_A}, "2026-01"))
    before.put("results/job_old.png", b"old")
    after = EncryptedStorage(inner, Keyring({"2026-01": KEY_A, "2026-06": KEY_B}, "2026-06"))
    after.put("results/job_new.png", b"new")
    assert parse_header((inner.root / "results/job_old.png").read_bytes()).key_id == "2026-01"
    assert parse_header((inner.root / "results/job_new.png").read_bytes()).key_id == "2026-06"
    assert after.get("results/job_old.png") == b"old"
    assert after.get("results/job_new.png") == b"new"


def test_an_empty_object_round_trips(tmp_path: Path) -> None:
    storage, _ = _local(tmp_path, Keyring({"a": KEY_A}, "a"))
    storage.put("results/job_empty.png", b"")
    assert storage.get("results/job_empty.png") == b""
    assert b"".join(storage.open_range("results/job_empty.png").chunks) == b""


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_settings_choose_encryption_and_refuse_bad_keys_and_presigned_delivery(tmp_path: Path) -> None:
    assert isinstance(make_storage(Settings(data_dir=tmp_path)), LocalStorage)  # unset: no encryption
    chosen = make_storage(
        Settings(
            data_dir=tmp_path,
            storage_encryption_keys={"k1": _b64(KEY_A), "k2": _b64(KEY_B)},
            storage_encryption_key_id="k2",
        )
    )
    assert isinstance(chosen, EncryptedStorage)
    assert isinstance(chosen.inner, LocalStorage)
    assert chosen.keyring.current == "k2"
    assert chosen.keyring.keys["k1"] == KEY_A
    for keys, key_id, problem in (
        ({"k1": _b64(KEY_A)}, "k2", "names no configured key"),
        ({"k1": _b64(b"short")}, "k1", "must be 32 bytes"),
        ({"k1": "not base64!"}, "k1", "base64"),
        ({"k1": _b64(KEY_A)}, None, "needs FACEMINT_STORAGE_ENCRYPTION_KEY_ID"),
    ):
        with pytest.raises(ValidationError, match=problem):
            Settings(data_dir=tmp_path, storage_encryption_keys=keys, storage_encryption_key_id=key_id)
    with pytest.raises(ValidationError, match="presigned cannot serve encrypted results"):
        Settings(
            data_dir=tmp_path,
            storage_backend="s3",
            s3_bucket="bucket",
            storage_result_delivery="presigned",
            storage_encryption_keys={"k1": _b64(KEY_A)},
            storage_encryption_key_id="k1",
        )


def test_keys_come_from_the_environment_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEMINT_STORAGE_ENCRYPTION_KEYS", f'{{"k1": "{_b64(KEY_A)}"}}')
    monkeypatch.setenv("FACEMINT_STORAGE_ENCRYPTION_KEY_ID", "k1")
    settings = Settings(data_dir=tmp_path)
    assert _b64(KEY_A) not in repr(settings)  # a secret: kept out of logs
    keyring = settings.storage_keyring()
    assert keyring is not None
    assert keyring.keys == {"k1": KEY_A}


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_plaintext_from_before_encryption_is_read_as_is_only_when_allowed(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    inner = LocalStorage(tmp_path / "storage") if backend == "local" else request.getfixturevalue("s3_inner")
    data = os.urandom(3 * CHUNK_SIZE + 5)
    inner.put("results/job_old.mp4", data)
    strict = EncryptedStorage(inner, Keyring({"a": KEY_A}, "a"))
    with pytest.raises(ObjectUnreadable, match="FACEMINT_STORAGE_ENCRYPTION_READ_PLAINTEXT"):
        strict.get("results/job_old.mp4")
    with pytest.raises(ObjectUnreadable, match="no header"):
        strict.open_range("results/job_old.mp4", "bytes=0-9")
    with pytest.raises(ObjectUnreadable, match="no header"), strict.local_copy("results/job_old.mp4"):
        pass

    lenient = EncryptedStorage(inner, Keyring({"a": KEY_A}, "a"), read_plaintext=True)
    assert lenient.get("results/job_old.mp4") == data
    with lenient.local_copy("results/job_old.mp4") as copy:
        assert copy.read_bytes() == data
    ranged = lenient.open_range("results/job_old.mp4", f"bytes={CHUNK_SIZE}-{CHUNK_SIZE + 9}")
    assert (ranged.first, ranged.last, ranged.size, ranged.partial) == (CHUNK_SIZE, CHUNK_SIZE + 9, len(data), True)
    assert b"".join(ranged.chunks) == data[CHUNK_SIZE : CHUNK_SIZE + 10]
    ranged.close()
    whole = lenient.open_range("results/job_old.mp4")
    assert b"".join(whole.chunks) == data
    whole.close()
    with pytest.raises(RangeNotSatisfiable):
        lenient.open_range("results/job_old.mp4", f"bytes={len(data)}-")
    lenient.put("results/job_new.mp4", b"new")  # new objects are sealed all the same
    assert inner.get("results/job_new.mp4").startswith(MAGIC)
    assert (inner.path("results/job_old.mp4") is not None) == (backend == "local")  # untouched by the reads


def test_settings_allow_plaintext_reads(tmp_path: Path) -> None:
    chosen = make_storage(
        Settings(
            data_dir=tmp_path,
            storage_encryption_keys={"k1": _b64(KEY_A)},
            storage_encryption_key_id="k1",
            storage_encryption_read_plaintext=True,
        )
    )
    assert isinstance(chosen, EncryptedStorage)
    assert chosen.read_plaintext
