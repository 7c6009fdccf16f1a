"""The S3 backend of `Storage` (boto3): objects in one bucket under an optional prefix, for deployments where the
API and the workers run on different machines. S3 has no local files, so what LocalStorage does with a path is done
here with local staging files and streams:

- uploads (and video results) are written to `staging_path(key)`, a file under a local staging folder, then
  `put_file` sends it with boto3's managed transfer (multipart above the threshold, read from the file part by
  part, never whole into memory) and removes it;
- `path()` is None; the worker reads a video input through `local_copy` (downloaded to a staging file, streamed),
  and the API serves a result with `open_range` (S3's ranged GET, so players can seek) or `presigned_url`.

Staging files sit flat in the staging folder, named by their key with `/` as `~` (a character keys never hold), so
no folder is made per job and none is left behind; downloads for `local_copy` sit in `downloads/` beside them.

Deleting is by key and by prefix (list, then batch delete), independent of any bucket lifecycle rule: the sweeper
decides when a file goes, as it does on local disk. So is clearing what a crash left: `clear_stale_staging`
removes old staged and downloaded files and aborts multipart uploads started before its bound (a process killed
mid-upload leaves its parts in the bucket, invisible to listings, until they are aborted). Credentials come from
boto3's standard chain (environment, profile, instance role), never from the settings."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from facemint.storage import (
    SERVICE_FOLDERS,
    ObjectMissing,
    ObjectRange,
    RangeNotSatisfiable,
    StoredObject,
    checked_key,
    remove_if_older,
)

_MISSING = {"NoSuchKey", "404", "NotFound"}
_SEPARATOR = "~"  # stands for "/" in a staged file's name: never in a key (facemint.storage.checked_key)
_DOWNLOADS = "downloads"
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
_CHUNK = 1024 * 1024


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        staging_dir: Path,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = 16 * 1024 * 1024,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("the S3 backend needs a bucket (FACEMINT_S3_BUCKET)")
        self.bucket = bucket
        self.prefix = prefix
        self.staging_dir = staging_dir
        (staging_dir / _DOWNLOADS).mkdir(parents=True, exist_ok=True)
        # Path-style addressing: S3-compatible servers on a host:port (SeaweedFS, MinIO) have no bucket subdomains.
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"mode": "standard"}),
        )
        # Parts the size of the threshold: a 512 MiB video is 32 parts, 4 in flight, so at most ~64 MiB buffered.
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_threshold,
            max_concurrency=4,
        )

    def _key(self, key: str) -> str:
        return self.prefix + checked_key(key)

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """One PUT: S3 acknowledges an object once it is stored whole, so `durable` needs nothing more here."""
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _staged(self, key: str) -> Path:
        return self.staging_dir / checked_key(key).replace("/", _SEPARATOR)

    def staging_path(self, key: str) -> Path:
        """A local file in the staging folder (`<staging>/inputs~job_x~target`), sent by `put_file`."""
        return self._staged(key)

    def put_file(self, key: str, source: Path, *, durable: bool = True) -> None:
        """Uploads `source` (multipart above the threshold, streamed from the file), then removes it. A failed
        upload leaves `source` in place and aborts its parts (boto3's transfer manager does), then raises."""
        self.client.upload_file(str(source), self.bucket, self._key(key), Config=self.transfer)
        source.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise _missing_or(exc, key) from exc
        body = response["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def path(self, key: str) -> Path | None:
        return None  # no local files: see local_copy, open_range and presigned_url

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """The object as a local file for as long as the block runs (a video the decoder needs to seek in):
        downloaded in ranged parts to a staging file, removed afterwards."""
        # Unique per reader: two readers of one key never share (or delete) each other's copy.
        name = f"{self._staged(key).name}.{secrets.token_hex(6)}"
        target = self.staging_dir / _DOWNLOADS / name
        try:
            self.client.download_file(self.bucket, self._key(key), str(target), Config=self.transfer)
        except ClientError as exc:
            target.unlink(missing_ok=True)
            raise _missing_or(exc, key) from exc
        try:
            yield target
        finally:
            target.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise _missing_or(exc, key) from exc
        return int(response["ContentLength"])

    def open_range(self, key: str, byte_range: str | None = None) -> ObjectRange:
        """The object, or the one range `byte_range` asks for ("bytes=0-99", "bytes=100-", "bytes=-500"), as a
        stream of chunks: one GET with the Range header passed on, so a player's seek costs S3 only those bytes.
        A range that starts past the end raises RangeNotSatisfiable with the object's size."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if byte_range is not None:
            request["Range"] = byte_range
        try:
            response = self.client.get_object(**request)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) == "InvalidRange":
                raise RangeNotSatisfiable(self.size(key)) from exc
            raise _missing_or(exc, key) from exc
        length = int(response["ContentLength"])
        content_range = response.get("ContentRange")  # "bytes 0-99/1234" when a range was served
        if content_range:
            span, _, total = content_range.removeprefix("bytes ").partition("/")
            start_text, _, end_text = span.partition("-")
            start, end, size, partial = int(start_text), int(end_text), int(total), True
        else:
            start, end, size, partial = 0, length - 1, length, False
        body = response["Body"]
        return ObjectRange(
            chunks=body.iter_chunks(_CHUNK), first=start, last=end, size=size, partial=partial, close=body.close
        )

    def presigned_url(self, key: str, ttl_seconds: int, *, filename: str | None = None) -> str:
        """A URL that GETs the object without credentials until `ttl_seconds` pass (signed locally: no request)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename is not None:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_seconds))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))  # S3 answers 204 for a missing key too
        self._staged(key).unlink(missing_ok=True)  # and a staged file never sent

    def delete_prefix(self, prefix: str) -> None:
        """The object named `prefix` and every object under `prefix/`, in batches of 1000; any key S3 refuses to
        delete raises, so the sweeper keeps the job marked and tries again."""
        base = prefix.rstrip("/")
        # Staged files under the prefix go too: a refused upload is staged locally and never reaches the bucket,
        # and its submit cleans up with delete_prefix as it does on local disk.
        staged = self._staged(base)
        staged.unlink(missing_ok=True)
        for path in self.staging_dir.glob(f"{staged.name}{_SEPARATOR}*"):  # keys hold no glob characters
            path.unlink(missing_ok=True)
        keys = [self._key(base)] + [self.prefix + stored.key for stored in self.list(base)]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                raise OSError(f"S3 refused to delete {len(errors)} objects, first {errors[0]}")

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under `prefix/` (a folder such as "results"), page by page, keys without the bucket prefix."""
        folder = self._key(prefix.rstrip("/")) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                yield StoredObject(key=item["Key"][len(self.prefix) :], modified_at=item["LastModified"].timestamp())

    def clear_stale_staging(self, older_than: float) -> int:
        """Remove staged and downloaded files last written before `older_than` (seconds since the epoch), and abort
        the multipart uploads under this deployment's folders started before it. Returns how many of either went."""
        removed = 0
        for folder in (self.staging_dir, self.staging_dir / _DOWNLOADS):
            for entry in os.scandir(folder):
                if entry.is_file(follow_symlinks=False):
                    removed += remove_if_older(Path(entry.path), older_than)
                elif entry.name != _DOWNLOADS and entry.is_dir(follow_symlinks=False):
                    removed += _remove_old_tree(Path(entry.path), older_than)  # the per-key folders of before
        paginator = self.client.get_paginator("list_multipart_uploads")
        # Only the folders this service writes: a bucket shared with others keeps their uploads.
        pages = (
            page
            for folder in SERVICE_FOLDERS
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}{folder}/")
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() >= older_than:
                    continue  # maybe still being sent
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except ClientError as exc:
                    if str(exc.response.get("Error", {}).get("Code", "")) != "NoSuchUpload":
                        raise
                    continue  # completed or aborted meanwhile
                removed += 1
        return removed


def _remove_old_tree(folder: Path, older_than: float) -> int:
    """Old files under `folder`, then its folders left empty (bottom up)."""
    removed = 0
    for parent, folders, names in os.walk(folder, topdown=False):
        for name in names:
            removed += remove_if_older(Path(parent) / name, older_than)
        for name in folders:
            with contextlib.suppress(OSError):  # not empty: something recent is in it
                (Path(parent) / name).rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()
    return removed


def _missing_or(exc: ClientError, key: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return ObjectMissing(key) if code in _MISSING else exc
