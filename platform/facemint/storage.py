"""Where job inputs and results live. `Storage` is the small interface a backend implements; `LocalStorage`
keeps objects as files under one directory. Deleting something that is already gone succeeds; any other failure
raises, so the caller (the sweeper) keeps the job marked as still holding files and tries again.

Keys are relative paths made by the service (`inputs/<job>/source`, `results/<job>.png`), never user text. Large
uploads (videos) never pass through memory: they stream into `staging_path(key)` and are stored with `put_file`;
results are read as files (`path`) where the backend has them."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from facemint.config import Settings

_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


class ObjectMissing(FileNotFoundError):
    """The object was deleted (or expired) or never written."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    modified_at: float  # seconds since the epoch


class Storage(Protocol):
    def put(self, key: str, data: bytes, *, durable: bool = True) -> None: ...
    def staging_path(self, key: str) -> Path: ...
    def put_file(self, key: str, source: Path, *, durable: bool = True) -> None: ...
    def get(self, key: str) -> bytes: ...
    def path(self, key: str) -> Path | None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list(self, prefix: str) -> Iterator[StoredObject]: ...


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _resolve(self, key: str) -> Path:
        if not _KEY.fullmatch(key) or ".." in key.split("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Atomic: a reader sees the whole object or none (written to a temporary file, renamed). `durable`
        fsyncs first, so the object survives a power loss once `put` returns (results, which are charged for);
        inputs skip it: losing one in a crash fails its job uncharged (`input_missing`)."""
        target = self._resolve(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:  # the rename itself lives in the directory: sync it too
            _sync_directory(target.parent)

    def staging_path(self, key: str) -> Path:
        """A local file to write the object for `key` into (an upload as it streams) before `put_file(key, it)`.
        Here: beside the object, so `put_file` is a rename, and itself a key under the same folder (`<key>.staging`),
        so a file left behind by a crash is found and removed by the orphan sweep like any other object."""
        target = self._resolve(f"{key}.staging")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def put_file(self, key: str, source: Path, *, durable: bool = True) -> None:
        """Store the local file `source` under `key` without reading it into memory: moved (renamed on the same
        filesystem, copied then removed across filesystems), atomic for readers as `put` is. `source` is gone
        afterwards. `durable` as for `put`."""
        target = self._resolve(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if durable:
            with source.open("rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                if durable:
                    with open(tmp, "rb") as handle:
                        os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            source.unlink(missing_ok=True)
        if durable:
            _sync_directory(target.parent)

    def get(self, key: str) -> bytes:
        try:
            return self._resolve(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc

    def path(self, key: str) -> Path | None:
        """A local file to stream from, or None when the object is gone (or the backend has no files)."""
        target = self._resolve(key)
        return target if target.is_file() else None

    def delete(self, key: str) -> None:
        self._resolve(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        target = self._resolve(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target, onerror=_ignore_missing)  # onexc is 3.12+
        else:
            target.unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under `prefix` (a folder such as "results"), in no particular order; files being written
        (`.part-*`) are left out."""
        base = self._resolve(prefix.rstrip("/"))
        for folder, _, names in os.walk(base):
            for name in names:
                if name.startswith(".part-"):
                    continue
                path = Path(folder) / name
                try:
                    modified = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                yield StoredObject(key=path.relative_to(self.root).as_posix(), modified_at=modified)


def _sync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _ignore_missing(function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def input_prefix(public_id: str) -> str:
    return f"inputs/{public_id}"


def result_key(public_id: str, extension: str) -> str:
    return f"results/{public_id}.{extension}"


def make_storage(settings: Settings) -> Storage:
    return LocalStorage(settings.resolved_storage_dir)
