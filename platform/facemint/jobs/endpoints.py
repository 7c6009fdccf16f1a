"""/v1/swaps, /v1/jobs and /v1/usage: submit metered swaps, follow them, download and delete results."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from facemint import slots
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope as AuthScope
from facemint.config import Settings
from facemint.db import after_commit, unit_of_work
from facemint.deps import (
    IdempotencyKey,
    SessionDep,
    SettingsDep,
    commit_in_this_thread,
    page_params,
    require,
    require_released,
    rollback_in_this_thread,
)
from facemint.jobs import files, forms, queue, submission, waiting
from facemint.jobs import queries as job_queries
from facemint.jobs import service as jobs
from facemint.jobs.errors import InvalidSwapRequest, ResultGone, ResultRangeNotSatisfiable
from facemint.jobs.orm import TERMINAL_STATUSES
from facemint.jobs.schemas import JobRead, UsageRead, UsageRow, has_result
from facemint.pagination import Page, PageParams, make_page
from facemint.storage import ObjectMissing, RemoteStorage, Storage, input_prefix
from facemint.storage import RangeNotSatisfiable as StoredRangeNotSatisfiable
from facemint.timestamps import IsoDate, UtcDatetime
from facemint.webhooks import service as webhook_service
from facemint.webhooks.errors import InvalidWebhookUrl
from facemint.webhooks.schemas import WebhookEventRead
from facemint.webhooks.urls import DeadlineResolver, ResolveTimeout
from inference import media
from inference.errors import InvalidOutputFormat
from inference.processors import parse_processors
from inference.selection import FaceMode, FaceSelection

router = APIRouter(prefix="/v1", tags=["swaps"])

# Authenticated with nothing held afterwards: the upload is read after the caller is known, and may be slow.
Submitter = Annotated[Principal, Depends(require_released(AuthScope.swaps_write))]
Reader = Annotated[Principal, Depends(require(AuthScope.jobs_read))]
Writer = Annotated[Principal, Depends(require(AuthScope.jobs_write))]

_MULTIPART_OVERHEAD = 64 * 1024
SWAPS_PATH = "/v1/swaps"


def swap_body_limit(settings: Settings) -> int:
    """The most a swap upload may stream: a video target, the source and reference images and the form around
    them (each file is also refused on its own as soon as it passes its limit)."""
    return settings.max_video_bytes + 2 * settings.max_image_bytes + _MULTIPART_OVERHEAD


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


StorageDep = Annotated[Storage, Depends(get_storage)]


@router.post(
    "/swaps",
    response_model=JobRead,
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra={"requestBody": forms.openapi_request_body()},
    responses={
        200: {"description": "a replay of this Idempotency-Key, or finished within `Prefer: wait`"},
        402: {"description": "not enough tokens: nothing was queued"},
        403: {
            "description": "a missing scope, a frozen user or suspended tenant, or an abuse rule of the tenant froze "
            "the account at this submit (`account_frozen`): nothing was recorded or held"
        },
        429: {
            "description": "rate limited, too many jobs queued or running for the tenant's plan, or too many "
            "`Prefer: wait` requests waiting"
        },
        503: {"description": "the queue (or the abuse checks) is unavailable: nothing was recorded or held"},
    },
)
async def submit_swap(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Submitter,
    idempotency_key: IdempotencyKey,
    storage: StorageDep,
) -> Response:
    """Submit a face swap. The form (multipart/form-data) is read only after the caller is authenticated and
    allowed to submit: a `source` image, a `target` image or video (MP4, MOV, WebM or MKV), `reference` with
    `faces=reference`, and the options below. Nothing else is accepted. A video is probed before anything is held
    and priced per started second of its (trimmed) duration."""
    wait = waiting.requested_wait(request.headers.get("prefer"), settings)
    lease: slots.Lease | None = None
    if wait and principal.tenant_id is not None:
        lease = await waiting.take_wait_slot(
            request.app.state.async_redis, settings, tenant_id=principal.tenant_id, seconds=wait
        )
    public_id = jobs.new_public_id()
    staged = committing = False

    def stage() -> Path:
        nonlocal staged
        staged = True
        return storage.staging_path(f"{input_prefix(public_id)}/{submission.VIDEO_FIELD}")

    def submit_and_commit(swap: submission.SwapSubmission) -> submission.SwapSubmitted:
        nonlocal committing
        try:
            submitted = submission.submit_swap(
                session,
                settings=settings,
                redis=request.app.state.redis,
                sessions=request.app.state.sessionmaker,
                storage=storage,
                principal=principal,
                idempotency_key=idempotency_key,
                swap=swap,
            )
        except BaseException:
            rollback_in_this_thread(session)
            raise
        committing = True
        # The boundary's checks, COMMIT and queueing, in this same thread hop: one hop per submit, not two, and
        # the locks the submit took (the idempotency key's, the account row) go with it.
        commit_in_this_thread(session)
        return submitted

    try:
        # `Submitter` authenticated outside any transaction: no transaction, connection or row lock is held while
        # the body streams in, which may take minutes for a video.
        upload = await forms.read_swap_upload(
            request, max_image_bytes=settings.max_image_bytes, max_video_bytes=settings.max_video_bytes, stage=stage
        )
        swap = await _checked_submission(upload, settings, principal.tenant_id, public_id)
        submitted = await run_in_threadpool(submit_and_commit, swap)
    except BaseException:
        # Before the commit, nothing was committed: what this request staged goes (the rollback's steps remove
        # what the submit stored). Once committing, the commit's outcome decides, as at the boundary: a refused
        # check rolled back and ran those steps; a failed COMMIT may have landed, so nothing is removed.
        if staged and not committing:
            storage.delete_prefix(input_prefix(public_id))
        if lease is not None:
            await slots.release_async(request.app.state.async_redis, lease)
        raise
    # Answered once committed, so a waiter never waits for a job that then fails to commit, and no thread is held
    # while it waits.
    return SwapResponse(request, submitted, wait=wait, lease=lease)


# Resolving a webhook host is blocking DNS. It runs off the event loop, and a lookup waits at most this long, on
# threads capped per tenant: a caller naming a host whose name server never answers ties up its own lookups only.
WEBHOOK_LOOKUP_SECONDS = 5.0
_lookups = DeadlineResolver(socket.getaddrinfo, max_pending=32, max_pending_per_key=4)


def _checked_webhook_url(url: str, settings: Settings, tenant_id: int | None) -> str:
    resolve = _lookups.until(time.monotonic() + WEBHOOK_LOOKUP_SECONDS, key=tenant_id)
    try:
        return webhook_service.validate_webhook_url(
            url, allowed_networks=settings.webhook_allowed_networks, resolve=resolve
        )
    except ResolveTimeout as exc:
        raise InvalidWebhookUrl(f"the webhook host could not be resolved in {WEBHOOK_LOOKUP_SECONDS:g} s") from exc


# Options that only a video takes: refused on an image rather than ignored.
_VIDEO_ONLY = ("trim_start", "trim_end", "crf", "progress_webhooks")


async def _checked_submission(
    upload: forms.SwapUpload, settings: Settings, tenant_id: int | None, public_id: str
) -> submission.SwapSubmission:
    options = upload.options
    selection = FaceSelection.parse(options.faces, threshold=options.threshold)
    processors = parse_processors(options.processors)
    if selection.mode is FaceMode.reference and "reference" not in upload.files:
        raise InvalidSwapRequest("faces=reference needs a `reference` image", field="reference")
    if selection.mode is not FaceMode.reference and "reference" in upload.files:
        raise InvalidSwapRequest("a reference image is only used with faces=reference", field="reference")
    checked: dict[str, Any] = {
        "faces": options.faces.strip().lower(),
        "threshold": options.threshold,
        "has_reference": "reference" in upload.files,
        "processors": list(processors),
    }
    requested = (options.output_format or "").strip().lower()
    if upload.video is None:
        for name in _VIDEO_ONLY:
            if name in options.model_fields_set:
                raise InvalidSwapRequest(f"`{name}` applies to a video target only", field=name)
        if requested == "mp4":
            raise InvalidOutputFormat("mp4 is for a video target: an image's result is png, jpeg or webp")
        checked |= {
            "output_format": media.output_format(requested or "png", options.quality),
            "quality": options.quality,
        }
    else:
        if requested not in ("", "mp4"):
            raise InvalidOutputFormat(f"a video's result is mp4, not {requested[:10]!r}: send mp4 or leave it out")
        if options.progress_webhooks and not options.webhook_url:
            raise InvalidSwapRequest("`progress_webhooks` needs a `webhook_url`", field="progress_webhooks")
        checked |= {
            "output_format": "mp4",
            "trim": {"start": options.trim_start, "end": options.trim_end},
            "crf": settings.video_crf if options.crf is None else options.crf,
            "progress_webhooks": options.progress_webhooks,
        }
    webhook_url = options.webhook_url
    if webhook_url:
        webhook_url = await run_in_threadpool(_checked_webhook_url, webhook_url, settings, tenant_id)
    return submission.SwapSubmission(
        public_id=public_id, files=upload.files, video=upload.video, options=checked, webhook_url=webhook_url
    )


class SwapResponse(Response):
    """The submit's answer, produced once the request has committed: with `Prefer: wait`, it first waits on the
    event loop (no thread) for the job to finish, or the client to leave, or the wait to run out."""

    def __init__(
        self, request: Request, submitted: submission.SwapSubmitted, *, wait: int | None, lease: slots.Lease | None
    ) -> None:
        super().__init__(status_code=status.HTTP_202_ACCEPTED)
        self.request = request
        self.submitted = submitted
        self.wait = wait
        self.lease = lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.request.app.state
        job = self.submitted.job
        headers: dict[str, str] = {}
        try:
            if self.wait and job.status not in TERMINAL_STATUSES:
                job = await self._wait(receive, job) or job
                headers["Preference-Applied"] = f"wait={self.wait}"
        finally:
            if self.lease is not None:
                await slots.release_async(state.async_redis, self.lease)
        if self.submitted.replayed:
            headers["Idempotent-Replayed"] = "true"
        headers["X-Tokens-Held"] = str(job.tokens_held if job.status in ("queued", "running") else 0)
        headers["X-Balance-Available"] = str(self.submitted.available)
        headers["Location"] = f"/v1/jobs/{job.public_id}"
        finished = self.submitted.replayed or job.status in TERMINAL_STATUSES
        response = Response(
            JobRead.from_row(job).model_dump_json(),
            status_code=status.HTTP_200_OK if finished else status.HTTP_202_ACCEPTED,
            headers=headers,
            media_type="application/json",
        )
        await response(scope, receive, send)

    async def _wait(self, receive: Receive, job: Any) -> Any:
        """The job as it finished, read once Postgres says so; None when the wait ran out or the client left."""
        gone = asyncio.Event()
        seen: Any = None

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def is_finished() -> bool:
            nonlocal seen
            seen = await run_in_threadpool(_current, self.request, job.id)
            return seen is not None and seen.status in TERMINAL_STATUSES

        listener = asyncio.create_task(listen())
        try:
            finished = await waiting.wait_until_finished(
                self.request.app.state.async_redis,
                public_id=job.public_id,
                seconds=float(self.wait or 0),
                is_finished=is_finished,
                client_gone=gone.is_set,
            )
            return seen if finished else None
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


def _current(request: Request, job_id: int) -> Any:
    """The job as committed now, read in a session of its own (the request's has already committed)."""
    with unit_of_work(request.app.state.sessionmaker) as session:
        return job_queries.get_by_id(session, job_id=job_id)


def _own_job(session: Session, principal: Principal, job_id: str) -> Any:
    return job_queries.get_visible(
        session, public_id=job_id, user_id=principal.user_id, tenant_scope=principal.tenant_id, own_only=True
    )


@router.get("/jobs", response_model=Page[JobRead])
def list_jobs(
    session: SessionDep,
    principal: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    status: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|canceled)$")] = None,
    operation: Annotated[str | None, Query(max_length=100)] = None,
    created_after: Annotated[UtcDatetime | None, Query(description="UTC unless an offset is given")] = None,
    created_before: Annotated[UtcDatetime | None, Query(description="UTC unless an offset is given")] = None,
) -> Page[JobRead]:
    rows = job_queries.list_jobs(
        session,
        user_id=principal.user_id,
        status=status,
        operation=operation,
        created_after=created_after,
        created_before=created_before,
        before_id=page.before_id,
        limit=page.limit,
    )
    ids = {row.public_id: row.id for row in rows}
    return make_page([JobRead.from_row(r) for r in rows], limit=page.limit, id_of=lambda item: ids[item.id])


@router.get("/jobs/{job_id}", response_model=JobRead)
def get_job(job_id: str, session: SessionDep, principal: Reader) -> JobRead:
    return JobRead.from_row(_own_job(session, principal, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: str, request: Request, session: SessionDep, principal: Writer) -> JobRead:
    job = jobs.cancel(session, job=_own_job(session, principal, job_id))
    if job.status == "canceled":
        redis: Redis = request.app.state.redis
        # Only wakes `Prefer: wait` callers (who re-check Postgres every second), once the cancel is committed.
        after_commit(session, lambda: _notify_finished(redis, job.public_id, job.status))
    return JobRead.from_row(job)


def _notify_finished(redis: Redis, public_id: str, job_status: str) -> None:
    with contextlib.suppress(RedisError):
        queue.notify_finished(redis, public_id=public_id, status=job_status)


class ResultFileResponse(FileResponse):
    """Starlette's file response (ranges: 206 with Content-Range, several as multipart/byteranges, If-Range),
    with its refusals in the API's terms: a range that starts past the end is a 416 problem with `Content-Range:
    bytes */<size>`; a malformed Range header is ignored and the whole file sent, as RFC 9110 allows."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []
        except RangeNotSatisfiable:
            raise ResultRangeNotSatisfiable(
                f"no range of {http_range[:100]!r} starts within the result's {file_size} bytes",
                headers={"Content-Range": f"bytes */{file_size}"},
                size_bytes=file_size,
            ) from None


@router.get(
    "/jobs/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "video/mp4": {}}},
        206: {"description": "the ranges asked for (`Range: bytes=...`; several as multipart/byteranges)"},
        307: {"description": "with S3 storage and presigned delivery: the result at a short-lived presigned URL"},
        410: {},
        416: {"description": "no range asked for starts within the result"},
    },
)
def get_result(
    job_id: str, request: Request, session: SessionDep, principal: Reader, storage: StorageDep, settings: SettingsDep
) -> Any:
    """The job's result: the swapped image, or the video (MP4, with range requests for players). A succeeded job
    has one until it expires or is deleted; so does a video canceled while running, with the part it processed."""
    job = _own_job(session, principal, job_id)
    if not has_result(job):
        jobs.ensure_finished(job)
        if job.result_location is None:
            raise ResultGone(f"the job {job.status}: it has no result", status=job.status)
        raise ResultGone("the result was deleted or has expired")
    extension = job.result_location.rsplit(".", 1)[-1]
    if isinstance(storage, RemoteStorage):
        return _remote_result(storage, settings, request, job, f"{job.public_id}.{extension}")
    path = storage.path(job.result_location)
    if path is None:
        raise ResultGone("the result was deleted or has expired")
    return ResultFileResponse(
        path,
        media_type=job.result_content_type,
        filename=f"{job.public_id}.{extension}",
        headers={"Cache-Control": "private, no-store"},
    )


_SINGLE_RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")


def _remote_result(storage: RemoteStorage, settings: Settings, request: Request, job: Any, filename: str) -> Response:
    """A result in S3: a 307 to a presigned URL (the bytes skip the API), or streamed through the API with one
    range passed on to S3's ranged GET so players can seek. Several ranges, or a malformed header, get the whole
    object (RFC 9110 lets a server ignore Range); the presigned URL serves ranges itself."""
    key = job.result_location
    if settings.storage_result_delivery == "presigned":
        url = storage.presigned_url(key, settings.s3_presigned_ttl_seconds, filename=filename)
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT, headers=_NO_STORE)
    asked = request.headers.get("range")
    byte_range = asked.replace(" ", "") if asked and _SINGLE_RANGE.fullmatch(asked.replace(" ", "")) else None
    try:
        read = storage.open_range(key, byte_range)
    except ObjectMissing:
        raise ResultGone("the result was deleted or has expired") from None
    except StoredRangeNotSatisfiable as exc:
        raise ResultRangeNotSatisfiable(
            f"no range of {byte_range!r} starts within the result's {exc.size} bytes",
            headers={"Content-Range": f"bytes */{exc.size}"},
            size_bytes=exc.size,
        ) from None
    headers = {
        **_NO_STORE,
        "Accept-Ranges": "bytes",
        "Content-Length": str(read.last - read.first + 1),
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    if read.partial:
        headers["Content-Range"] = f"bytes {read.first}-{read.last}/{read.size}"

    def chunks() -> Iterator[bytes]:
        try:
            yield from read.chunks
        finally:
            read.close()

    return StreamingResponse(
        chunks(),
        status_code=status.HTTP_206_PARTIAL_CONTENT if read.partial else status.HTTP_200_OK,
        media_type=job.result_content_type,
        headers=headers,
    )


_NO_STORE = {"Cache-Control": "private, no-store"}


@router.delete("/jobs/{job_id}", response_model=JobRead)
def delete_job_files(job_id: str, session: SessionDep, principal: Writer, storage: StorageDep) -> JobRead:
    """Deletes the job's input and result files now; the job record and its charges stay (the money trail)."""
    job = _own_job(session, principal, job_id)
    jobs.ensure_finished(job)
    job = jobs.mark_files_deleted(session, job_id=job.id)
    # Deleted once the mark is committed; a deletion that fails now is retried by the sweeper, which purges
    # every job marked deleted and not yet purged.
    after_commit(session, lambda: files.purge_files(storage, job))
    return JobRead.from_row(job)


@router.get("/jobs/{job_id}/webhooks", response_model=list[WebhookEventRead])
def list_job_webhooks(job_id: str, session: SessionDep, principal: Reader) -> list[WebhookEventRead]:
    job = _own_job(session, principal, job_id)
    return webhook_service.list_deliveries(session, job_id=job.id)


@router.get("/usage", response_model=UsageRead)
def get_usage(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(AuthScope.usage_read))],
    start: IsoDate | None = None,
    end: IsoDate | None = None,
) -> UsageRead:
    """Charges (captured tokens) by UTC day and operation, `start` to `end` inclusive (default: the last 30 days)."""
    end = end or datetime.now(UTC).date()
    start = start or end - timedelta(days=29)
    if start > end or (end - start).days > 366:
        raise InvalidSwapRequest("`start` must be on or before `end`, at most 366 days apart")
    rows = job_queries.usage(session, user_id=principal.user_id, start=start, end=end)
    items = [UsageRow(day=r.day, operation=r.operation, jobs=r.jobs, tokens=r.tokens) for r in rows]
    return UsageRead(start=start, end=end, total_tokens=sum(i.tokens for i in items), items=items)
