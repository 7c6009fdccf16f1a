"""`facemint storage rekey` (facemint.storage_rekey) on local disk and on S3 (SeaweedFS on loopback): every object
not under the current key id, plaintext ones included, is sealed again under it, so the old key can go; a dry run
counts and changes nothing; a run that stopped is finished by the next; an object deleted meanwhile stays deleted;
a reader caught between an object's old header and its new chunks still gets the right bytes."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from facemint import storage_rekey
from facemint.cli.main import cli
from facemint.config import get_settings
from facemint.storage import LocalStorage, Storage, read_object
from facemint.storage_crypto import CHUNK_SIZE, MAGIC, EncryptedStorage, Keyring, parse_header
from facemint.storage_rekey import rekey
from tests.storage_servers import s3_storage

OLD, NEW = bytes(range(32)), bytes(range(32, 64))
BIG = "results/job_ab12-a1.mp4"
SMALL = "inputs/job_ab12/source"
LEGACY = "results/job_0ld0-a1.png"  # stored before encryption was turned on


@pytest.fixture(params=["local", "s3"])
def raw(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    server = request.getfixturevalue("s3_server")
    return s3_storage(server, request.getfixturevalue("monkeypatch"), tmp_path / "staging")


def _key_id(raw: Storage, key: str) -> str | None:
    with read_object(raw, key) as read:
        head = next(read.chunks, b"")
    return parse_header(head).key_id if head.startswith(MAGIC) else None


def _populate(raw: Storage) -> dict[str, bytes]:
    """Two objects sealed under "old" (one of many chunks, stored from a staged file) and one plaintext."""
    before = EncryptedStorage(raw, Keyring({"old": OLD}, "old"))
    contents = {BIG: os.urandom(5 * CHUNK_SIZE + 321), SMALL: b"source bytes", LEGACY: b"plaintext png"}
    staged = before.staging_path(BIG)
    staged.write_bytes(contents[BIG])
    before.put_file(BIG, staged)
    before.put(SMALL, contents[SMALL])
    raw.put(LEGACY, contents[LEGACY])
    return contents


def _rotated(raw: Storage) -> EncryptedStorage:
    return EncryptedStorage(raw, Keyring({"old": OLD, "new": NEW}, "new"), read_plaintext=True)


def test_a_dry_run_counts_by_key_id_and_changes_nothing(raw: Storage) -> None:
    contents = _populate(raw)
    report = rekey(_rotated(raw), dry_run=True)
    assert dict(report.by_key_id) == {"old": 2, "plaintext": 1}
    assert report.pending == 3
    assert report.pending_bytes > len(contents[BIG])
    assert report.resealed == 0
    assert [_key_id(raw, key) for key in (BIG, SMALL, LEGACY)] == ["old", "old", None]


def test_every_object_is_resealed_under_the_current_key_and_the_old_key_can_go(raw: Storage) -> None:
    contents = _populate(raw)
    report = rekey(_rotated(raw))
    assert (report.resealed, report.gone, report.failed) == (3, 0, [])
    assert [_key_id(raw, key) for key in contents] == ["new", "new", "new"]
    only_new = EncryptedStorage(raw, Keyring({"new": NEW}, "new"))  # the old key removed, plaintext refused
    for key, content in contents.items():
        assert only_new.get(key) == content
    again = rekey(only_new)  # idempotent: nothing left to do
    assert (dict(again.by_key_id), again.pending, again.resealed) == ({"new": 3}, 0, 0)
    staging = raw.root if isinstance(raw, LocalStorage) else raw.staging_dir  # type: ignore[attr-defined]
    assert not list(staging.rglob("*.rekey*"))  # no staged file left


def test_a_run_that_stopped_midway_is_finished_by_the_next(raw: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = _populate(raw)
    real_put_file = raw.put_file
    calls: list[str] = []

    def put_file_then_stop(key: str, source: Path, *, durable: bool = True) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise OSError("the disk filled up")  # the run stops here, as a killed one would
        real_put_file(key, source, durable=durable)

    monkeypatch.setattr(raw, "put_file", put_file_then_stop)
    with pytest.raises(OSError, match="disk filled up"):
        rekey(_rotated(raw))
    monkeypatch.setattr(raw, "put_file", real_put_file)
    assert [_key_id(raw, key) for key in contents].count("new") == 1  # one done before it stopped
    rotated = _rotated(raw)
    for key, content in contents.items():  # the stopped run left every object readable
        assert rotated.get(key) == content

    report = rekey(rotated)
    assert report.resealed == 2
    assert [_key_id(raw, key) for key in contents] == ["new", "new", "new"]


def test_an_object_deleted_while_it_is_resealed_stays_deleted(raw: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    _populate(raw)
    raw.delete(SMALL)
    raw.delete(LEGACY)
    real_encrypt = storage_rekey.encrypt_stream

    def encrypt_while_the_sweeper_deletes(*args: object, **kwargs: object) -> None:
        real_encrypt(*args, **kwargs)  # type: ignore[arg-type]
        raw.delete(BIG)  # the result expired meanwhile

    monkeypatch.setattr(storage_rekey, "encrypt_stream", encrypt_while_the_sweeper_deletes)
    report = rekey(_rotated(raw))
    assert (report.pending, report.gone, report.resealed) == (1, 1, 0)
    assert list(raw.list("results")) == []  # not written back


def test_an_unreadable_object_is_reported_and_the_others_are_resealed(tmp_path: Path) -> None:
    raw = LocalStorage(tmp_path / "storage")
    contents = _populate(raw)
    stored = raw.root / BIG
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    stored.write_bytes(damaged)
    report = rekey(_rotated(raw))
    assert [key for key, _ in report.failed] == [BIG]
    assert "fails authentication" in report.failed[0][1]
    assert report.resealed == 2
    assert stored.read_bytes() == damaged  # left as it was
    assert _rotated(raw).get(SMALL) == contents[SMALL]


def test_a_reader_between_the_old_header_and_the_new_chunks_reads_the_right_bytes(
    raw: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = _populate(raw)
    reader = _rotated(raw)
    real_header = reader._header
    swapped: list[bool] = []

    def header_then_rekey(key: str) -> object:
        header = real_header(key)
        if not swapped:
            swapped.append(True)
            assert rekey(_rotated(raw)).resealed == 3  # replaces the object after its header was read
        return header

    monkeypatch.setattr(reader, "_header", header_then_rekey)
    first, last = 2 * CHUNK_SIZE - 5, 3 * CHUNK_SIZE + 5
    read = reader.open_range(BIG, f"bytes={first}-{last}")
    try:
        assert b"".join(read.chunks) == contents[BIG][first : last + 1]
    finally:
        read.close()
    assert swapped


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_the_command_counts_then_reencrypts(tmp_path: Path) -> None:
    raw = LocalStorage(tmp_path / "storage")
    contents = _populate(raw)
    env: dict[str, str | None] = {
        "FACEMINT_DATA_DIR": str(tmp_path),
        "FACEMINT_STORAGE_DIR": str(raw.root),
        "FACEMINT_STORAGE_ENCRYPTION_KEYS": f'{{"old": "{_b64(OLD)}", "new": "{_b64(NEW)}"}}',
        "FACEMINT_STORAGE_ENCRYPTION_KEY_ID": "new",
        "FACEMINT_STORAGE_ENCRYPTION_READ_PLAINTEXT": "true",
    }
    counted = _invoke(env, "--dry-run")
    assert counted.exit_code == 0, counted.output
    assert "objects by key id: old=2, plaintext=1" in counted.output
    assert "3 object(s)" in counted.output
    assert [_key_id(raw, key) for key in contents] == ["old", "old", None]
    done = _invoke(env)
    assert done.exit_code == 0, done.output
    assert "re-encrypted 3 object(s) under key id new" in done.output
    digest = hashlib.sha256(contents[BIG]).digest()
    assert hashlib.sha256(EncryptedStorage(raw, Keyring({"new": NEW}, "new")).get(BIG)).digest() == digest
    unencrypted = _invoke({**env, "FACEMINT_STORAGE_ENCRYPTION_KEYS": None, "FACEMINT_STORAGE_ENCRYPTION_KEY_ID": None})
    assert unencrypted.exit_code == 1
    assert "storage is not encrypted" in unencrypted.output


def _invoke(env: dict[str, str | None], *options: str) -> Result:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, ["storage", "rekey", *options], env=env, catch_exceptions=False)
    finally:
        get_settings.cache_clear()
