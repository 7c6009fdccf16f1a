"""`/v1/swaps` and `/v1/jobs`: submit a swap (multipart upload, with an Idempotency-Key), follow it, wait for it,
download its result."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from facemint_client._core import (
    Call,
    ClientConfig,
    Flow,
    Sleep,
    execute,
    new_idempotency_key,
    parse_json,
    parse_list,
    query,
    stream,
    to_file,
)
from facemint_client._resource import Listing, M, Resource, endpoint, flow, listing, paged
from facemint_client._uploads import FileInput, Upload
from facemint_client.errors import JobFailed, RateLimited, WaitTimeout
from facemint_client.models import Job, JobStatus, WebhookEventRecord

# The server caps `Prefer: wait` (FACEMINT_PREFER_WAIT_MAX_SECONDS, at most 300 s) and answers 202 past it.
PREFER_WAIT_LIMIT = 300


def _get(job_id: str) -> Call[Job]:
    return Call(method="GET", path=f"/v1/jobs/{job_id}", parse=parse_json(Job))


def _settled(job: Job) -> Job:
    if job.status == "succeeded":
        return job
    raise JobFailed(job)


def wait_for(
    config: ClientConfig,
    job_id: str,
    *,
    timeout: float,
    poll_interval: float,
    max_poll_interval: float,
    seen: Job | None = None,
) -> Flow[Job]:
    """Poll the job until it finishes, the interval growing by half each time up to `max_poll_interval`."""
    deadline = time.monotonic() + timeout
    interval = poll_interval
    job = seen
    while True:
        if job is None:
            job = yield from execute(config, _get(job_id))
        if job.finished:
            return _settled(job)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(job, timeout)
        yield Sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_poll_interval)
        job = None


class Jobs(Resource[M]):
    @endpoint("POST /v1/swaps")
    def submit(
        self,
        source: FileInput,
        target: FileInput,
        *,
        reference: FileInput | None = None,
        faces: str | None = None,
        threshold: float | None = None,
        processors: str | Sequence[str] | None = None,
        output_format: str | None = None,
        quality: int | None = None,
        webhook_url: str | None = None,
        trim_start: float | None = None,
        trim_end: float | None = None,
        crf: int | None = None,
        progress_webhooks: bool | None = None,
        prefer_wait: int | None = None,
        idempotency_key: str | None = None,
    ) -> Call[Job]:
        """Submit a swap: `source` is the face to put in, `target` the image or video to change (each a path,
        bytes or a binary file object). Its price is held at once; 402 `InsufficientTokens` if the balance
        cannot cover it. An Idempotency-Key is made unless given, and sent again on every retry: a retry never
        makes a second job. `prefer_wait=N` asks the server to answer once the job finishes, within N seconds
        (then the job may already be `succeeded`)."""
        return _submit_call(
            source,
            target,
            reference=reference,
            options=_options(
                faces=faces,
                threshold=threshold,
                processors=processors,
                output_format=output_format,
                quality=quality,
                webhook_url=webhook_url,
                trim_start=trim_start,
                trim_end=trim_end,
                crf=crf,
                progress_webhooks=progress_webhooks,
            ),
            prefer_wait=prefer_wait,
            idempotency_key=idempotency_key,
            timeout=self._config.timeout,
        )

    @flow("POST /v1/swaps", "GET /v1/jobs/{job_id}")
    def run(
        self,
        source: FileInput,
        target: FileInput,
        *,
        reference: FileInput | None = None,
        faces: str | None = None,
        threshold: float | None = None,
        processors: str | Sequence[str] | None = None,
        output_format: str | None = None,
        quality: int | None = None,
        webhook_url: str | None = None,
        trim_start: float | None = None,
        trim_end: float | None = None,
        crf: int | None = None,
        progress_webhooks: bool | None = None,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
        max_poll_interval: float = 5.0,
        idempotency_key: str | None = None,
    ) -> Flow[Job]:
        """Submit a swap and wait for it: the server holds the submit's answer until the job finishes (`Prefer:
        wait`, within its own cap), then `wait` polls for the rest of `timeout`. Returns the succeeded job;
        raises `JobFailed` or `WaitTimeout`. The other options are `submit`'s."""
        started = time.monotonic()
        call = _submit_call(
            source,
            target,
            reference=reference,
            options=_options(
                faces=faces,
                threshold=threshold,
                processors=processors,
                output_format=output_format,
                quality=quality,
                webhook_url=webhook_url,
                trim_start=trim_start,
                trim_end=trim_end,
                crf=crf,
                progress_webhooks=progress_webhooks,
            ),
            prefer_wait=max(1, min(int(timeout), PREFER_WAIT_LIMIT)),
            # Made here: the submit without waiting, below, must send the same key.
            idempotency_key=idempotency_key or new_idempotency_key(),
            timeout=self._config.timeout,
        )
        try:
            job: Job = yield from execute(self._config, call)
        except RateLimited as exc:
            if exc.code != "too_many_waits":
                raise
            # The tenant's waiting slots are taken: submit without waiting (nothing was recorded under the key).
            job = yield from execute(self._config, replace(call, headers=None, timeout=None))
        remaining = max(0.0, timeout - (time.monotonic() - started))
        return (
            yield from wait_for(
                self._config,
                job.id,
                timeout=remaining,
                poll_interval=poll_interval,
                max_poll_interval=max_poll_interval,
                seen=job,
            )
        )

    @endpoint("GET /v1/jobs/{job_id}")
    def get(self, job_id: str) -> Call[Job]:
        return _get(job_id)

    @flow("GET /v1/jobs/{job_id}")
    def wait(
        self, job_id: str, *, timeout: float = 300.0, poll_interval: float = 0.5, max_poll_interval: float = 5.0
    ) -> Flow[Job]:
        """Poll until the job finishes (backoff from `poll_interval` to `max_poll_interval`). Returns the
        succeeded job; raises `JobFailed` (failed or canceled: `.job`, `.code`) or `WaitTimeout` after
        `timeout` seconds (the job goes on)."""
        return wait_for(
            self._config, job_id, timeout=timeout, poll_interval=poll_interval, max_poll_interval=max_poll_interval
        )

    @endpoint("POST /v1/jobs/{job_id}/cancel")
    def cancel(self, job_id: str) -> Call[Job]:
        """Cancel a queued job (its hold released) or ask a running one to stop; 409 `JobAlreadyFinished` once it
        has finished."""
        return Call(method="POST", path=f"/v1/jobs/{job_id}/cancel", parse=parse_json(Job))

    @endpoint("DELETE /v1/jobs/{job_id}")
    def delete_files(self, job_id: str) -> Call[Job]:
        """Delete a finished job's input and result files now; the job and its charges stay."""
        return Call(method="DELETE", path=f"/v1/jobs/{job_id}", parse=parse_json(Job), replay_safe=True)

    @endpoint("GET /v1/jobs/{job_id}/webhooks")
    def webhooks(self, job_id: str) -> Call[list[WebhookEventRecord]]:
        """The job's webhook events and every delivery attempt."""
        return Call(method="GET", path=f"/v1/jobs/{job_id}/webhooks", parse=parse_list(WebhookEventRecord))

    @flow("GET /v1/jobs/{job_id}/result")
    def download(self, job_id: str) -> Flow[bytes]:
        """The result's bytes (an image, or a video: prefer `download_to` for those)."""
        body = bytearray()
        yield from stream(self._config, _result(job_id), body.extend)
        return bytes(body)

    @flow("GET /v1/jobs/{job_id}/result")
    def download_to(self, job_id: str, path: str | os.PathLike[str]) -> Flow[Path]:
        """Stream the result into `path` (written beside it first, then renamed: never a partial file there)."""
        yield from to_file(path, lambda write: stream(self._config, _result(job_id), write))
        return Path(path)

    @paged("GET /v1/jobs")
    def list(
        self,
        *,
        status: JobStatus | None = None,
        operation: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int | None = None,
    ) -> Listing[Job]:
        """The caller's jobs, newest first, every page as iteration reaches it."""
        return listing(
            "/v1/jobs",
            Job,
            limit=limit,
            status=status,
            operation=operation,
            created_after=created_after,
            created_before=created_before,
        )


def _result(job_id: str) -> Call[None]:
    # With S3 storage the API may answer 307 to a presigned URL: followed, without the Authorization header
    # (httpx drops it on a redirect to another origin).
    return Call(method="GET", path=f"/v1/jobs/{job_id}/result", parse=lambda response: None, headers={"Accept": "*/*"})


def _submit_call(
    source: FileInput,
    target: FileInput,
    *,
    reference: FileInput | None,
    options: dict[str, str],
    prefer_wait: int | None,
    idempotency_key: str | None,
    timeout: float,
) -> Call[Job]:
    uploads = {"source": Upload.of(source, field="source"), "target": Upload.of(target, field="target")}
    if reference is not None:
        uploads["reference"] = Upload.of(reference, field="reference")
    return Call(
        method="POST",
        path="/v1/swaps",
        parse=parse_json(Job),
        uploads=uploads,
        form=options,
        headers={"Prefer": f"wait={prefer_wait}"} if prefer_wait else None,
        idempotent=True,
        idempotency_key=idempotency_key,
        # The answer may wait for the job: the read timeout covers that wait.
        timeout=timeout + prefer_wait if prefer_wait else None,
    )


def _options(*, processors: str | Sequence[str] | None, **values: Any) -> dict[str, str]:
    joined = processors if isinstance(processors, str) or processors is None else ",".join(processors)
    return query(processors=joined, **values)
