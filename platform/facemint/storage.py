"""Where job inputs and results live. `Storage` is the small interface a backend implements; `LocalStorage`
keeps objects as files under one directory. Deleting something that is already gone succeeds; any other failure
raises, so the caller (the sweeper) keeps the job marked as still holding files and tries again.

Keys are relative paths made by the service (`inputs/<job>/source`, `results/<job>.png`), never user text. Large
uploads (videos) never pass through memory: they stream into `staging_path(key)` and are stored with `put_file`;
results are read as files (`path`) where the backend has them, through `local_copy` where it may not. The S3
backend is `facemint.storage_s3`; `facemint.storage_crypto` wraps either to encrypt objects at rest.

What a crash leaves behind while staging (a half-written staged file, a temporary `.part-*` file, on S3 an
incomplete multipart upload) is removed by `clear_stale_staging`, which the sweeper calls with a bound longer than
any job can run (see `facemint.jobs.files.clear_stale_staging`)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from facemint.config import Settings

_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
# LocalStorage.staging_path(key) is the key plus this: a staged file is itself a key the orphan sweep can name.
STAGING_SUFFIX = ".staging"
# Every key the service writes starts with one of these folders (input_prefix, result_key; integrations' images
# and cached results, `facemint.integrations`): what a backup copies and `facemint storage rekey` re-seals.
SERVICE_FOLDERS = ("inputs", "results", "integrations")
_READ_CHUNK = 1024 * 1024


def checked_key(key: str) -> str:
    """`key` if it is a key the service makes (relative, no `..`, plain characters); ValueError otherwise. Every
    backend checks keys here, so a path never comes from anything else."""
    if not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class ObjectMissing(FileNotFoundError):
    """The object was deleted (or expired) or never written."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    modified_at: float  # seconds since the epoch


class RangeNotSatisfiable(ValueError):
    """No byte of the range asked for lies within the object (`size` bytes)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"no range starts within the object's {size} bytes")
        self.size = size


@dataclass(frozen=True, slots=True)
class ObjectRange:
    """An open read of bytes `first`..`last` (inclusive) of an object of `size` bytes; `partial` when a range was
    served rather than the whole object. `close` releases the connection once the chunks are read (or not)."""

    chunks: Iterator[bytes]
    first: int
    last: int
    size: int
    partial: bool
    close: Callable[[], None]


class Storage(Protocol):
    def put(self, key: str, data: bytes, *, durable: bool = True) -> None: ...
    def staging_path(self, key: str) -> Path: ...
    def put_file(self, key: str, source: Path, *, durable: bool = True) -> None: ...
    def get(self, key: str) -> bytes: ...
    def path(self, key: str) -> Path | None: ...
    def local_copy(self, key: str) -> contextlib.AbstractContextManager[Path]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list(self, prefix: str) -> Iterator[StoredObject]: ...
    def clear_stale_staging(self, older_than: float) -> int: ...


@runtime_checkable
class RemoteStorage(Protocol):
    """A backend without local files (S3): results leave it as a ranged stream or a presigned URL."""

    def open_range(self, key: str, byte_range: str | None = None) -> ObjectRange: ...
    def presigned_url(self, key: str, ttl_seconds: int, *, filename: str | None = None) -> str: ...


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _resolve(self, key: str) -> Path:
        return self.root / checked_key(key)

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
        target = self._resolve(f"{key}{STAGING_SUFFIX}")
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

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """The object as a local file while the block runs: here the stored file itself (no copy)."""
        target = self.path(key)
        if target is None:
            raise ObjectMissing(key)
        yield target

    def delete(self, key: str) -> None:
        self._resolve(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        target = self._resolve(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target, onerror=ignore_missing)  # onexc is 3.12+
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

    def clear_stale_staging(self, older_than: float) -> int:
        """Remove staged files (`*.staging`) and temporary files (`.part-*`) last written before `older_than`
        (seconds since the epoch): what a process killed while writing left behind. Returns how many went."""
        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                if not (name.startswith(".part-") or name.endswith(STAGING_SUFFIX)):
                    continue
                removed += remove_if_older(Path(folder) / name, older_than)
        return removed


def service_keys(storage: Storage) -> Iterator[str]:
    """The key of every object the service stored (under `SERVICE_FOLDERS`), staged files left out."""
    for folder in SERVICE_FOLDERS:
        for stored in storage.list(folder):
            if not stored.key.endswith(STAGING_SUFFIX):
                yield stored.key


def remove_if_older(path: Path, older_than: float) -> int:
    """1 when `path` was last written before `older_than` and is now removed, else 0."""
    try:
        if path.stat().st_mtime >= older_than:
            return 0
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


@contextlib.contextmanager
def read_object(storage: Storage, key: str) -> Iterator[ObjectRange]:
    """The whole object as a stream of chunks (`size` is its length), never in memory at once: a ranged GET on
    S3 (or the plaintext of an encrypted object), the file itself on local disk. ObjectMissing when it is gone."""
    if isinstance(storage, RemoteStorage):
        read = storage.open_range(key)
    else:
        local = storage.path(key)
        if local is None:
            raise ObjectMissing(key)
        try:
            handle = local.open("rb")
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc
        size = os.fstat(handle.fileno()).st_size
        read = ObjectRange(
            chunks=iter(lambda: handle.read(_READ_CHUNK), b""),
            first=0,
            last=size - 1,
            size=size,
            partial=False,
            close=handle.close,
        )
    try:
        yield read
    finally:
        read.close()


def _sync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def ignore_missing(function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def input_prefix(public_id: str) -> str:
    return f"inputs/{public_id}"


def result_key(public_id: str, extension: str) -> str:
    return f"results/{public_id}.{extension}"


def make_storage(settings: Settings) -> Storage:
    inner = _backend(settings)
    keyring = settings.storage_keyring()
    if keyring is None:
        return inner
    from facemint.storage_crypto import EncryptedStorage

    return EncryptedStorage(inner, keyring, read_plaintext=settings.storage_encryption_read_plaintext)


def _backend(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        from facemint.storage_s3 import S3Storage  # boto3 loads only where S3 is used

        # Staging files (uploads as they stream, results as they are encoded) stay on local disk: S3 has no paths.
        return S3Storage(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            staging_dir=settings.data_dir / "staging",
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            multipart_threshold=settings.s3_multipart_threshold_bytes,
        )
    return LocalStorage(settings.resolved_storage_dir)
