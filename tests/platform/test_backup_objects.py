"""Backups of stored objects (facemint.backup, facemint.backup_objects) on S3 (SeaweedFS on loopback) with
encryption at rest: objects are kept as stored (ciphertext, with their key ids in the manifest, checksums checkable
without a key), streamed so a large one never sits in memory, restored into S3 only where the keys they need are
configured, and a plaintext object restored into encrypted storage is sealed on the way in."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import create_engine, pool, text

from facemint.backup import BackupError, create_backup, restore_backup
from facemint.db import sqlalchemy_url
from facemint.storage import Storage, read_object
from facemint.storage_crypto import MAGIC, EncryptedStorage, Keyring, sealed_key_id
from tests.conftest import with_database
from tests.storage_servers import S3Server, s3_storage

T = TypeVar("T")
MIB = 1024 * 1024
K1, K2 = bytes(range(32)), bytes(range(32, 64))
BIG = "results/job_ab12-a1.mp4"
SMALL = "inputs/job_ab12/source"
LEGACY = "results/job_0ld0-a1.png"  # stored before encryption was turned on
BIG_SIZE = 24 * MIB + 5
# Traced Python allocations while a BIG_SIZE object is backed up or restored: a few 1 MiB chunks and the S3
# parts in flight (5 MiB here), never the object (about 2 MiB and 7 MiB measured; reading it whole takes 24+).
MEMORY_BOUND = 12 * MIB


def _sha256(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _stored_sha256(storage: Storage, key: str) -> str:
    with read_object(storage, key) as read:
        return _sha256(read.chunks)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return _sha256(iter(lambda: handle.read(MIB), b""))


def _traced_peak(run: Callable[[], T]) -> tuple[T, int]:
    """What `run` returns, and the peak of Python's traced allocations while it ran (every thread)."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _tables(owner_url: str) -> int:
    engine = create_engine(sqlalchemy_url(owner_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.fixture
def source(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[EncryptedStorage, str]:
    """Encrypted S3 storage holding a large sealed result, a small sealed input and a plaintext result from before
    encryption was turned on; and the large result's plaintext SHA-256."""
    storage = EncryptedStorage(
        s3_storage(s3_server, monkeypatch, tmp_path / "staging-source"), Keyring({"k1": K1}, "k1"), read_plaintext=True
    )
    staged = storage.staging_path(BIG)
    with staged.open("wb") as handle:
        for _ in range(BIG_SIZE // MIB):
            handle.write(os.urandom(MIB))
        handle.write(os.urandom(BIG_SIZE % MIB))
    big_sha = _file_sha256(staged)
    storage.put_file(BIG, staged)
    storage.put(SMALL, b"source bytes")
    storage.inner.put(LEGACY, b"plaintext png")
    return storage, big_sha


def test_an_encrypted_s3_backup_keeps_ciphertext_streams_and_restores_into_s3(
    source: tuple[EncryptedStorage, str],
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    owner_url: str,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    storage, big_sha = source
    backup = tmp_path / "backup"
    _, backup_peak = _traced_peak(lambda: create_backup(owner_url, storage, backup))

    metadata = json.loads((backup / "metadata.json").read_text())
    assert metadata["format_version"] == 2
    assert metadata["objects"]["key_ids"] == {"k1": 2, "plaintext": 1}
    entries = {row["key"]: row for row in json.loads((backup / "manifest.json").read_text())["objects"]}
    assert {key: row["key_id"] for key, row in entries.items()} == {BIG: "k1", SMALL: "k1", LEGACY: None}
    big_copy = backup / "objects" / BIG
    with big_copy.open("rb") as handle:
        assert sealed_key_id(handle.read(4096)) == "k1"  # the ciphertext, as stored
    # The manifest's checksums are of the stored bytes: checkable without any key.
    for key, row in entries.items():
        assert _file_sha256(backup / "objects" / key) == row["sha256"] == _stored_sha256(storage.inner, key)
    assert entries[BIG]["sha256"] != big_sha
    assert (backup / "objects" / LEGACY).read_bytes() == b"plaintext png"

    restored_owner = with_database(owner_url, fresh_database)
    unencrypted = s3_storage(s3_server, monkeypatch, tmp_path / "staging-plain")
    with pytest.raises(BackupError, match=r"sealed under key id\(s\) k1"):
        restore_backup(restored_owner, unencrypted, backup)
    other_keys = EncryptedStorage(unencrypted, Keyring({"k2": K2}, "k2"))
    with pytest.raises(BackupError, match=r"key id\(s\) k1"):
        restore_backup(restored_owner, other_keys, backup)
    assert list(unencrypted.list("results")) == []
    assert _tables(restored_owner) == 0  # refused before anything was written

    target = EncryptedStorage(
        s3_storage(s3_server, monkeypatch, tmp_path / "staging-target"), Keyring({"k1": K1, "k2": K2}, "k2")
    )
    summary, restore_peak = _traced_peak(lambda: restore_backup(restored_owner, target, backup))
    assert summary.objects_restored == 3
    assert _stored_sha256(target.inner, BIG) == entries[BIG]["sha256"]  # the same ciphertext
    assert _stored_sha256(target, BIG) == big_sha
    assert target.get(SMALL) == b"source bytes"
    legacy_raw = target.inner.get(LEGACY)
    assert legacy_raw.startswith(MAGIC)  # sealed on the way in, under the current key
    assert sealed_key_id(legacy_raw) == "k2"
    assert target.get(LEGACY) == b"plaintext png"

    assert backup_peak < MEMORY_BOUND, f"backup traced {backup_peak / MIB:.1f} MiB"
    assert restore_peak < MEMORY_BOUND, f"restore traced {restore_peak / MIB:.1f} MiB"
