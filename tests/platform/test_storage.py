"""LocalStorage's files: an upload staged beside its key and stored by a move (never read into memory), across
filesystems by a copy, and a staged file left by a crash named like any object the orphan sweep can find."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from facemint import storage as storage_module
from facemint.jobs import files
from facemint.storage import LocalStorage


def test_a_staged_file_is_stored_by_a_rename(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    staged = storage.staging_path("inputs/job_ab12/target")
    assert staged == tmp_path / "inputs/job_ab12/target.staging"
    staged.write_bytes(b"video bytes")
    inode = staged.stat().st_ino
    storage.put_file("inputs/job_ab12/target", staged, durable=False)
    assert not staged.exists()
    stored = storage.path("inputs/job_ab12/target")
    assert stored is not None
    assert stored.read_bytes() == b"video bytes"
    assert stored.stat().st_ino == inode  # moved, not copied


def test_a_file_from_another_filesystem_is_copied_then_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "store")
    source = tmp_path / "elsewhere.mp4"
    source.write_bytes(b"x" * 100_000)
    real_replace = os.replace
    refused: list[str] = []

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(src) == source:  # a rename across filesystems
            refused.append(str(src))
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(storage_module.os, "replace", replace)
    storage.put_file("results/job_ab12-a1.mp4", source)
    assert refused == [str(source)]
    assert not source.exists()
    assert storage.get("results/job_ab12-a1.mp4") == b"x" * 100_000
    assert [p.name for p in (tmp_path / "store/results").iterdir()] == ["job_ab12-a1.mp4"]  # no part file left


def test_a_durable_put_file_syncs_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(storage_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    staged = storage.staging_path("results/job_ab12-a1.mp4")
    staged.write_bytes(b"result")
    storage.put_file("results/job_ab12-a1.mp4", staged)
    assert len(synced) == 2  # the file, then the folder the rename lives in
    synced.clear()
    staged = storage.staging_path("inputs/job_ab12/target")
    staged.write_bytes(b"input")
    storage.put_file("inputs/job_ab12/target", staged, durable=False)
    assert synced == []


def test_a_staged_upload_left_by_a_crash_belongs_to_its_job(tmp_path: Path) -> None:
    """Staged under the job's inputs, a file a killed server left behind is the orphan sweep's like any input."""
    storage = LocalStorage(tmp_path)
    storage.staging_path("inputs/job_ab12/target").write_bytes(b"half an upload")
    listed = [stored.key for stored in storage.list("inputs")]
    assert listed == ["inputs/job_ab12/target.staging"]
    candidate = files.parse_key(listed[0])
    assert candidate is not None
    assert candidate.public_id == "job_ab12"
    assert not files.still_needed(candidate, None)
