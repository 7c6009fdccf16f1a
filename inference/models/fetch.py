"""Download model files resumably and verify them before they are used.

`fetch_models(models, dest)` downloads each `ModelFile` to `dest/<file>.part` (resuming an earlier `.part` with an
HTTP Range request), hashes it while writing, checks its size and SHA-256, fsyncs it and only then renames it onto
`dest/<file>`: a file at the final name is always complete and verified. `verify_models(models, directory)` reports
what is on disk; `require_models` turns that report into `ModelNotFound` / `ChecksumMismatch`.

LICENCE: the real models (`inference.models.manifest.REAL_MODELS`) are InsightFace's pretrained models, available
for **non-commercial research purposes only**; `fetch_models` logs each file's licence before downloading it.

The library prints nothing: progress goes to the caller's callback and messages to the `inference.models.fetch`
logger.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from inference.errors import ChecksumMismatch, DownloadError, ModelNotFound
from inference.models.demo import is_demo_model
from inference.models.manifest import ModelFile

if sys.platform != "win32":
    import fcntl

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""`progress(file, bytes_done, bytes_total)`: called when a file starts, about every MiB, and when it is done."""

PART_SUFFIX = ".part"
USER_AGENT = "facemint-inference-fetch/1"
HASH_CHUNK = 1 << 20
PROGRESS_STEP = 1 << 20
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


class _Transient(Exception):
    """A failure worth retrying: connection error, timeout, dropped connection, HTTP 408/429/5xx."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class VerifyResult:
    """What `verify_models` found for one model file.

    `sha256_ok` is only computed when the size is right (`sha256` is then the file's digest, else None);
    `is_demo` says the file is one of Facemint's demo stand-ins (`inference.models.is_demo_model`)."""

    model: ModelFile
    path: Path
    present: bool
    size_ok: bool
    sha256_ok: bool
    is_demo: bool
    size: int | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.present and self.size_ok and self.sha256_ok

    def describe(self) -> str:
        if not self.present:
            return f"{self.path}: missing"
        demo = " (a Facemint demo model)" if self.is_demo else ""
        if not self.size_ok:
            return f"{self.path}: {self.size} bytes, expected {self.model.size}{demo}"
        if not self.sha256_ok:
            return f"{self.path}: sha256 {self.sha256}, expected {self.model.sha256}{demo}"
        return f"{self.path}: ok{demo}"


def fetch_models(
    models: Sequence[ModelFile],
    dest: Path,
    *,
    progress: Progress | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> list[Path]:
    """Download the model files into `dest` (created if needed) and return their paths, in order.

    LICENCE: InsightFace's pretrained models (the detector, recogniser and swapper of `REAL_MODELS`) are for
    non-commercial research purposes only; each file's `licence` is logged (WARNING) before it is downloaded.

    For each model: a file already at `dest/<file>` with the right size and SHA-256 is kept without any request;
    a wrong one is deleted and downloaded again. The download goes to `dest/<file>.part`: an existing `.part` is
    resumed with `Range: bytes=<len>-` (appended on 206; a server answering 200 restarts it from zero; on 416 a
    part that already holds the whole file is verified). The body is streamed to disk and hashed while written.
    Transient failures (connection errors, timeouts, dropped connections, HTTP 408/429/5xx) are retried up to
    `retries` times, resuming each time, after `backoff * 2**n` seconds (or the server's Retry-After). Then
    size and SHA-256 are checked, the part is fsynced and renamed onto the final name atomically.

    Raises `ChecksumMismatch` (with `expected` / `actual`) when the digest is wrong: the part is deleted and no
    file is left at the final name (a stale part from an earlier run is first retried once from zero).
    Raises `DownloadError` for HTTP errors (404...), a size that differs from the manifest, and failures that
    outlast the retries (the part is kept then, so that the next call resumes it).

    `progress(file, bytes_done, bytes_total)` is called when a file starts, about every MiB and when it is
    complete (also for files already present); `bytes_done` goes back to 0 when a download restarts.
    Concurrent calls on the same directory (threads or processes) are serialised with an advisory lock on it
    (POSIX flock), so a second caller finds the files already fetched."""
    names = [model.file for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate model files: {', '.join(duplicates)}")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with _Clients(timeout) as clients, _directory_lock(dest):
            return [_fetch_one(clients, model, dest, progress, retries, backoff) for model in models]
    except OSError as exc:  # the destination is a file, unwritable, ...
        raise DownloadError(f"cannot use {dest} for the models: {exc}") from exc


def verify_models(models: Sequence[ModelFile], directory: Path) -> list[VerifyResult]:
    """Check each model file in `directory`: present, right size, right SHA-256 (hashed in chunks, only when the
    size is right), and whether it is a Facemint demo model."""
    results = []
    for model in models:
        path = Path(directory) / model.file
        if not path.is_file():
            results.append(VerifyResult(model, path, present=False, size_ok=False, sha256_ok=False, is_demo=False))
            continue
        size = path.stat().st_size
        digest = _hash_file(path)[0].hexdigest() if size == model.size else None
        try:
            demo = is_demo_model(path)
        except OSError:
            demo = False
        results.append(
            VerifyResult(
                model,
                path,
                present=True,
                size_ok=size == model.size,
                sha256_ok=digest == model.sha256,
                is_demo=demo,
                size=size,
                sha256=digest,
            )
        )
    return results


def require_models(models: Sequence[ModelFile], directory: Path, *, allow_demo: bool = False) -> list[Path]:
    """The paths of the model files in `directory`, or `ModelNotFound` for the first missing one and
    `ChecksumMismatch` for the first wrong one. With `allow_demo`, a Facemint demo model stands in for the real
    one (for tests and demos; never in production)."""
    paths = []
    for result in verify_models(models, directory):
        if not result.present:
            raise ModelNotFound(
                f"{result.model.name} model missing: {result.path} (fetch it with inference.models.fetch_models)",
                file=result.model.file,
                path=str(result.path),
            )
        if not (result.ok or (allow_demo and result.is_demo)):
            raise ChecksumMismatch(
                f"{result.model.name} model does not match its manifest: {result.describe()}",
                file=result.model.file,
                expected=result.model.sha256,
                actual=result.sha256,
                expected_size=result.model.size,
                actual_size=result.size,
            )
        paths.append(result.path)
    return paths


# --- one file -------------------------------------------------------------------------------------------------


class _Clients:
    """One `httpx.Client` for the whole call, made on first use (building its TLS context takes tens of ms, which
    a call that finds every file present should not pay)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._client: httpx.Client | None = None

    def get(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                follow_redirects=True,
                timeout=httpx.Timeout(self.timeout),
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            )
        return self._client

    def __enter__(self) -> _Clients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            self._client.close()


class _Part:
    """The `.part` file and the running digest of the bytes in it."""

    def __init__(self, path: Path) -> None:
        if path.is_symlink():
            path.unlink()  # never append through a link to somewhere outside the models directory
        self.path = path
        self.hasher = hashlib.sha256()
        self.length = 0
        self.sync()
        self.from_earlier_run = self.length > 0  # bytes this call did not download (cleared by `reset`)

    def sync(self) -> None:
        """Make `length`/`hasher` describe the file on disk (rehashing it when they differ)."""
        size = self.path.stat().st_size if self.path.is_file() else 0
        if size != self.length:
            self.hasher, self.length = _hash_file(self.path) if size else (hashlib.sha256(), 0)

    def reset(self) -> None:
        """Truncate the part to nothing (the next request starts from zero)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.hasher, self.length = hashlib.sha256(), 0
        self.from_earlier_run = False

    def discard_if_empty(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size == 0:
                self.path.unlink()


def _fetch_one(
    clients: _Clients,
    model: ModelFile,
    dest: Path,
    progress: Progress | None,
    retries: int,
    backoff: float,
) -> Path:
    final = dest / model.file
    if final.is_file():
        if _file_matches(final, model):
            logger.debug("%s is present and verified", final)
            if progress is not None:
                progress(model.file, model.size, model.size)
            return final
        logger.warning("%s does not match its manifest (size or sha256); downloading it again", final)
        final.unlink()

    logger.warning(
        "Fetching %s model %s (%d bytes) from %s. Licence: %s",
        model.name,
        model.file,
        model.size,
        model.url,
        model.licence,
    )
    part = _Part(dest / (model.file + PART_SUFFIX))
    if part.length > model.size:
        logger.warning("%s is longer than %s itself; starting again", part.path, model.file)
        part.reset()
    if part.length:
        logger.info("Resuming %s at byte %d of %d", model.file, part.length, model.size)
    if progress is not None:
        progress(model.file, part.length, model.size)

    failures = 0
    stale = False
    while True:
        try:
            if part.length < model.size:
                _download(clients.get(), model, part, progress)
            stale = part.from_earlier_run  # bytes from an earlier run that prove wrong: start once more from zero
            return _finish(model, part, final)
        except ChecksumMismatch:
            if not stale:
                raise
            logger.warning("%s from an earlier run is corrupt; downloading %s from zero", part.path, model.file)
        except (_Transient, httpx.TransportError) as exc:
            if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
                raise DownloadError(f"cannot download {model.url}: {exc}", file=model.file, url=model.url) from exc
            failures += 1
            if failures > retries:
                part.discard_if_empty()
                raise DownloadError(
                    f"downloading {model.file} from {model.url} failed after {failures} attempts: {exc}; "
                    f"{part.length} of {model.size} bytes are kept in {part.path.name} for the next attempt",
                    file=model.file,
                    url=model.url,
                    received=part.length,
                ) from exc
            delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF_S)
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            logger.info(
                "%s: %s; retry %d of %d in %.1f s from byte %d", model.file, exc, failures, retries, delay, part.length
            )
            time.sleep(delay)
            part.sync()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # too many redirects, a data: redirect, a bad body...
            raise DownloadError(f"cannot download {model.url}: {exc}", file=model.file, url=model.url) from exc
        except OSError as exc:
            raise DownloadError(f"cannot write {part.path}: {exc}", file=model.file, url=model.url) from exc


def _download(client: httpx.Client, model: ModelFile, part: _Part, progress: Progress | None) -> None:
    """One request: append what the server sends to the part (from zero when it ignores the range)."""
    offset = part.length
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", model.url, headers=headers) as response:
        status = response.status_code
        if status == 416 and offset:
            total = _content_range(response.headers.get("content-range"))[2]
            if total is not None and total <= offset:  # the part already holds everything the server has
                if total != model.size:
                    part.reset()
                    raise _size_error(model, total)
                return
            part.reset()
            raise _Transient(f"HTTP 416 for bytes={offset}- (server has {total} bytes); starting again from zero")
        if status in (408, 429) or status >= 500:
            raise _Transient(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
        if status == 206 and offset:
            start, _, total = _content_range(response.headers.get("content-range"))
            if total is not None and total != model.size:
                part.reset()
                raise _size_error(model, total)
            if start != offset:
                part.reset()
                raise _Transient(f"asked for bytes={offset}-, got {response.headers.get('content-range')!r}")
        elif status == 200:
            if offset:
                logger.info("%s: the server ignored the range request; downloading from zero", model.file)
                part.reset()
        else:
            raise DownloadError(f"HTTP {status} for {model.url}", file=model.file, url=model.url, http_status=status)

        remaining = model.size - part.length
        length = _int_or_none(response.headers.get("content-length"))
        if length is not None and length != remaining and not response.headers.get("content-encoding"):
            part.reset()
            raise _size_error(model, part.length + length)

        reported = part.length
        too_long = False
        with part.path.open("ab") as out:
            for chunk in response.iter_bytes():
                if part.length + len(chunk) > model.size:
                    too_long = True
                    break
                out.write(chunk)
                part.hasher.update(chunk)
                part.length += len(chunk)
                if progress is not None and (part.length - reported >= PROGRESS_STEP or part.length == model.size):
                    progress(model.file, part.length, model.size)
                    reported = part.length
        if too_long:
            part.reset()
            raise _size_error(model, None)
    if part.length < model.size:
        raise _Transient(f"the connection ended after {part.length} of {model.size} bytes")


def _finish(model: ModelFile, part: _Part, final: Path) -> Path:
    """Verify the complete part, fsync it and rename it onto the final name."""
    if part.length != model.size:
        part.reset()
        raise _size_error(model, part.length)
    actual = part.hasher.hexdigest()
    if actual != model.sha256:
        part.reset()
        raise ChecksumMismatch(
            f"{model.file} from {model.url} has sha256 {actual}, expected {model.sha256}; the download was deleted",
            file=model.file,
            url=model.url,
            expected=model.sha256,
            actual=actual,
        )
    with part.path.open("r+b") as fh:
        os.fsync(fh.fileno())
    os.replace(part.path, final)
    _fsync_directory(final.parent)
    logger.info("%s verified (sha256 %s) and installed at %s", model.file, actual, final)
    return final


# --- helpers ----------------------------------------------------------------------------------------------------


def _file_matches(path: Path, model: ModelFile) -> bool:
    return path.stat().st_size == model.size and _hash_file(path)[0].hexdigest() == model.sha256


def _hash_file(path: Path) -> tuple[hashlib._Hash, int]:
    hasher = hashlib.sha256()
    length = 0
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            hasher.update(chunk)
            length += len(chunk)
    return hasher, length


def _size_error(model: ModelFile, actual: int | None) -> DownloadError:
    sent = "more bytes" if actual is None else f"{actual} bytes"
    return DownloadError(
        f"{model.url} serves {sent} for {model.file}, the manifest says {model.size}; the download was refused",
        file=model.file,
        url=model.url,
        expected_size=model.size,
        actual_size=actual,
    )


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) of a `Content-Range: bytes a-b/N` header; None for what is absent or `*`."""
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None, None, None
    first, last, total = (int(group) if group and group != "*" else None for group in match.groups())
    return first, last, total


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    seconds = _int_or_none(value)
    return None if seconds is None else min(max(seconds, 0), MAX_RETRY_AFTER_S)


def _fsync_directory(directory: Path) -> None:
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `directory` (POSIX flock; nothing on Windows)."""
    if sys.platform == "win32":
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
