"""A job's stored files and when they go. Files never outlive their job:

- inputs are deleted once the job is finished (by the worker that settles it, else by the sweeper);
- a result is kept until its expiry or until the caller deletes it; every other result an attempt wrote (an
  attempt whose worker died between storing and settling, or whose settlement lost a race) goes when the job
  finishes;
- the database marks a job's files gone only after the storage confirmed it, so a delete that fails is retried
  by the next sweep;
- whatever no job accounts for any more (a submit whose commit failed, a file the steps above could not name) is
  removed by the orphan sweep once it is older than `orphan_file_grace_seconds`.

- staged files and unfinished uploads a crash left (a killed upload or encode, on S3 a multipart upload never
  completed) are removed once older than any job may run (`clear_stale_staging`).

Result keys are derived from the job (`results/<job>-a<attempt>.<ext>`), so every attempt's file can be named
without listing the storage; so is the file a video attempt encodes into before it is stored (the storage's
staging file for that key), which a worker killed mid-video leaves behind."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facemint.storage import STAGING_SUFFIX, Storage, input_prefix, result_key

if TYPE_CHECKING:
    from facemint.config import Settings

logger = logging.getLogger("facemint.sweeper")
_RESULT_KEY = re.compile(r"^results/(job_[0-9a-f]+)-a(\d+)\.[a-z0-9]+(\.staging)?$")
_INPUT_KEY = re.compile(r"^inputs/(job_[0-9a-f]+)/")


def result_extension(output_format: str) -> str:
    return output_format.replace("jpeg", "jpg")


def attempt_result_key(public_id: str, attempt: int, output_format: str) -> str:
    return result_key(f"{public_id}-a{attempt}", result_extension(output_format))


def stray_result_keys(job: Any, *, keep: str | None) -> list[str]:
    """The result keys every attempt of `job` may have written, but `keep` (the settled result); a video's
    attempts' staging files too."""
    options = job.options or {}
    keys = [
        attempt_result_key(job.public_id, attempt, options.get("output_format", "png"))
        for attempt in range(1, job.attempts + 1)
    ]
    if options.get("media") == "video":  # what `Storage.staging_path` names for each key
        keys += [f"{key}{STAGING_SUFFIX}" for key in keys]
    return [key for key in keys if key != keep]


def purge_finished(storage: Storage, job: Any, *, keep: str | None) -> None:
    """A finished job's inputs and the results of its attempts but `keep`. Raises if the storage fails."""
    storage.delete_prefix(job.input_location or input_prefix(job.public_id))
    for key in stray_result_keys(job, keep=keep):
        storage.delete(key)


def purge_files(storage: Storage, job: Any) -> None:
    """Everything the job stored, its settled result included (deleted by its caller, or expired)."""
    purge_finished(storage, job, keep=None)
    if job.result_location:
        storage.delete(job.result_location)


@dataclass(frozen=True, slots=True)
class OrphanCandidate:
    key: str
    public_id: str
    attempt: int | None  # results only


def parse_key(key: str) -> OrphanCandidate | None:
    """Which job (and attempt) a stored key belongs to; None for a key this service did not make."""
    match = _RESULT_KEY.match(key)
    if match:
        return OrphanCandidate(key=key, public_id=match.group(1), attempt=int(match.group(2)))
    match = _INPUT_KEY.match(key)
    if match:
        return OrphanCandidate(key=key, public_id=match.group(1), attempt=None)
    return None


def still_needed(candidate: OrphanCandidate, job: Any | None) -> bool:
    """Whether a job accounts for this stored object (`job` is its row, None when there is none)."""
    if job is None:
        return False
    if candidate.attempt is None:  # an input: needed until the job is finished and its inputs purged
        return job.inputs_deleted_at is None and job.status in ("queued", "running")
    if job.status == "running" and job.attempts == candidate.attempt:
        return True  # the live attempt's result, about to be settled
    return job.result_location == candidate.key and job.files_deleted_at is None


def clear_stale_staging(storage: Storage, settings: Settings, *, now: float | None = None) -> int:
    """Remove staged files and unfinished multipart uploads older than `settings.staging_grace_seconds()`: no job
    runs that long, so nothing still writes or reads them. Returns how many went."""
    cutoff = (time.time() if now is None else now) - settings.staging_grace_seconds()
    removed = storage.clear_stale_staging(cutoff)
    if removed:
        logger.info("removed %d staged files or unfinished uploads left by a crash", removed)
    return removed


async def clear_stale_staging_periodically(storage: Callable[[], Storage], settings: Settings) -> None:
    """`clear_stale_staging` every `orphan_sweep_interval_seconds`, in a thread, until cancelled: for an API
    process whose staged uploads sit on a disk no worker sweeps (S3 storage)."""
    while True:
        await asyncio.sleep(settings.orphan_sweep_interval_seconds)
        try:
            await asyncio.to_thread(clear_stale_staging, storage(), settings)
        except Exception:  # the next round tries again
            logger.warning("could not clear stale staging files", exc_info=True)
