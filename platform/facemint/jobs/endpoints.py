"""/v1/swaps, /v1/jobs and /v1/usage: submit metered swaps, follow them, download and delete results."""

from __future__ import annotations

import contextlib
import hashlib
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from billing.ledger import service as ledger
from billing.ledger.service import request_hash
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.config import Settings
from facemint.db import unit_of_work
from facemint.deps import IdempotencyKey, SessionDep, SettingsDep, page_params, require
from facemint.errors import PayloadTooLarge
from facemint.jobs import queries as job_queries
from facemint.jobs import queue
from facemint.jobs import service as jobs
from facemint.jobs.errors import InvalidPreferWait, InvalidSwapRequest, QueueUnavailable, ResultGone
from facemint.jobs.orm import TERMINAL_STATUSES
from facemint.jobs.schemas import JobRead, UsageRead, UsageRow
from facemint.pagination import Page, PageParams, make_page
from facemint.storage import Storage, input_prefix
from facemint.webhooks import service as webhook_service
from facemint.webhooks.schemas import WebhookEventRead
from inference import media
from inference.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from inference.selection import FaceMode, FaceSelection

router = APIRouter(prefix="/v1", tags=["swaps"])

Submitter = Annotated[Principal, Depends(require(Scope.swaps_write))]
Reader = Annotated[Principal, Depends(require(Scope.jobs_read))]
Writer = Annotated[Principal, Depends(require(Scope.jobs_write))]

SWAP_OPERATION = "swap.image"
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?:$|[,;\s])", re.IGNORECASE)
_MULTIPART_OVERHEAD = 64 * 1024
SWAPS_PATH = "/v1/swaps"


def swap_body_limit(settings: Settings) -> int:
    """The most a swap upload may stream: three images and the form around them."""
    return 3 * settings.max_image_bytes + _MULTIPART_OVERHEAD


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


StorageDep = Annotated[Storage, Depends(get_storage)]


async def _limit_request_size(request: Request, settings: SettingsDep) -> None:
    """Refuse an oversized upload from its Content-Length, before the multipart body is read and spooled."""
    declared = request.headers.get("content-length")
    ceiling = 3 * settings.max_image_bytes + _MULTIPART_OVERHEAD
    if declared is not None and declared.isdigit() and int(declared) > ceiling:
        raise PayloadTooLarge(f"the request is larger than {ceiling} bytes", limit=ceiling)


async def _read_image(upload: UploadFile | None, *, field: str, settings: Settings) -> bytes:
    if upload is None:
        raise InvalidSwapRequest(f"the `{field}` file is required", field=field)
    data = await upload.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise ImageTooLarge(f"`{field}` is larger than {settings.max_image_bytes} bytes", field=field)
    if not data:
        raise InvalidImage(f"`{field}` is empty", field=field)
    kind = media.detect_format(data)
    if kind not in ("jpeg", "png", "webp"):
        raise UnsupportedImageFormat(
            f"`{field}` is {'not an image' if kind is None else kind}; send JPEG, PNG or WebP",
            field=field,
            detected=kind,
        )
    return data


def _prefer_wait(request: Request, settings: Settings) -> int | None:
    header = request.headers.get("prefer")
    if not header:
        return None
    match = _PREFER_WAIT.search(header)
    if match is None:
        if "wait" in header.lower():
            raise InvalidPreferWait("use `Prefer: wait=<seconds>`")
        return None  # other preferences are ignored, as RFC 7240 allows
    return min(int(match.group(1)), settings.prefer_wait_max_seconds)


@router.post(
    "/swaps",
    response_model=JobRead,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(_limit_request_size)],
    responses={
        200: {"description": "a replay of this Idempotency-Key, or finished within `Prefer: wait`"},
        402: {"description": "not enough tokens: nothing was queued"},
        503: {"description": "the queue is unavailable: nothing was recorded or held"},
    },
)
async def submit_swap(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: Submitter,
    idempotency_key: IdempotencyKey,
    storage: StorageDep,
    source: Annotated[UploadFile | None, File(description="the face to put in")] = None,
    target: Annotated[UploadFile | None, File(description="the image to change")] = None,
    reference: Annotated[UploadFile | None, File(description="with faces=reference: whose face to replace")] = None,
    faces: Annotated[str, Form(max_length=300, description="largest | all | index:i,j | reference")] = "largest",
    threshold: Annotated[float, Form(ge=0, le=1, description="reference match threshold")] = 0.5,
    output_format: Annotated[str, Form(max_length=10)] = "png",
    quality: Annotated[int, Form(ge=1, le=100)] = 90,
    webhook_url: Annotated[str | None, Form(max_length=2048)] = None,
) -> Any:
    if principal.tenant_id is None:
        raise InvalidSwapRequest("platform staff have no token account to run swaps; use a tenant user")
    wait = _prefer_wait(request, settings)
    selection = FaceSelection.parse(faces, threshold=threshold)
    fmt = media.output_format(output_format, quality)
    files = {
        "source": await _read_image(source, field="source", settings=settings),
        "target": await _read_image(target, field="target", settings=settings),
    }
    if selection.mode is FaceMode.reference:
        files["reference"] = await _read_image(reference, field="reference", settings=settings)
    elif reference is not None:
        raise InvalidSwapRequest("a reference image is only used with faces=reference", field="reference")
    if webhook_url:
        # Resolving the host is blocking DNS (seconds for a slow name): never on the event loop.
        webhook_url = await run_in_threadpool(
            webhook_service.validate_webhook_url, webhook_url, allowed_networks=settings.webhook_allowed_networks
        )
    options = {
        "faces": faces.strip().lower(),
        "threshold": threshold,
        "output_format": fmt,
        "quality": quality,
        "has_reference": "reference" in files,
    }
    digest = request_hash(
        {
            "operation": SWAP_OPERATION,
            "options": options,
            "webhook_url": webhook_url,
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        }
    )
    # The rest touches Postgres, Redis and the disk: done in a worker thread, off the event loop.
    return await run_in_threadpool(
        _submit,
        request,
        response,
        session,
        settings,
        principal,
        idempotency_key,
        storage,
        files,
        options,
        webhook_url,
        digest,
        wait,
    )


def _submit(
    request: Request,
    response: Response,
    session: Session,
    settings: Settings,
    principal: Principal,
    idempotency_key: str,
    storage: Storage,
    files: dict[str, bytes],
    options: dict[str, Any],
    webhook_url: str | None,
    digest: bytes,
    wait: int | None,
) -> Any:
    redis: Redis = request.app.state.redis
    try:
        # Checked before anything is written. If Redis fails between here and the enqueue, the job is recorded
        # and held, and the dispatcher queues it once Redis answers (or its deadline releases it).
        redis.ping()
    except RedisError as exc:
        raise QueueUnavailable(
            "the job queue is unavailable; nothing was recorded or held, retry later",
            headers={"Retry-After": "5"},
        ) from exc

    public_id = jobs.new_public_id()
    prefix = input_prefix(public_id)
    for name, data in files.items():
        storage.put(f"{prefix}/{name}", data, durable=False)
    try:
        outcome = jobs.submit(
            session,
            request=jobs.SubmitRequest(
                public_id=public_id,
                tenant_id=principal.tenant_id,  # type: ignore[arg-type]  # checked by the caller
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                account_id=principal.account_id,
                operation=SWAP_OPERATION,
                queue=settings.queue_name,
                units=1,
                idempotency_key=idempotency_key,
                request_hash=digest,
                options=options,
                input_location=prefix,
                webhook_url=webhook_url,
                max_attempts=settings.job_max_attempts,
                deadline_seconds=settings.job_deadline_seconds,
            ),
        )
        available = outcome.available
        if available is None:
            available = ledger.get_balance(session, account_id=principal.account_id).available
        session.commit()  # the request boundary: the job and its hold are durable before anything is queued
    except BaseException:
        session.rollback()
        storage.delete_prefix(prefix)
        raise
    job = outcome.job
    if outcome.replayed:
        storage.delete_prefix(prefix)
        response.headers["Idempotent-Replayed"] = "true"
    else:
        try:
            queue.enqueue(
                redis,
                queue_name=job.queue,
                public_id=job.public_id,
                timeout_seconds=settings.job_deadline_seconds,
            )
        except RedisError:
            # Recorded and held, but not queued: the dispatcher queues it as soon as Redis answers again, or the
            # sweeper fails it and releases its tokens at its deadline. Either way the tokens are accounted for.
            with unit_of_work(request.app.state.sessionmaker) as new_session:
                jobs.mark_undispatched(new_session, job_id=job.id)
    if wait:
        try:
            finished = queue.wait_until(
                redis,
                public_id=job.public_id,
                timeout_seconds=wait,
                is_finished=lambda: _current(request, job.id).status in TERMINAL_STATUSES,
            )
            response.headers["Preference-Applied"] = f"wait={wait}"
        except RedisError:
            # The job is committed (and held): answer it as it is rather than fail a request that succeeded.
            finished = False
        if finished:
            job = _current(request, job.id)
    response.status_code = status.HTTP_200_OK if outcome.replayed or job.status in TERMINAL_STATUSES else 202
    response.headers["X-Tokens-Held"] = str(job.tokens_held if job.status in ("queued", "running") else 0)
    response.headers["X-Balance-Available"] = str(available)
    response.headers["Location"] = f"/v1/jobs/{job.public_id}"
    return JobRead.from_row(job)


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
    created_after: datetime | None = None,
    created_before: datetime | None = None,
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
    session.commit()
    if job.status == "canceled":
        # Only wakes `Prefer: wait` callers (who re-check Postgres every second): the cancel is committed already.
        with contextlib.suppress(RedisError):
            queue.notify_finished(request.app.state.redis, public_id=job.public_id, status=job.status)
    return JobRead.from_row(job)


@router.get(
    "/jobs/{job_id}/result",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, 410: {}},
)
def get_result(job_id: str, session: SessionDep, principal: Reader, storage: StorageDep) -> Any:
    job = _own_job(session, principal, job_id)
    if job.status != "succeeded":
        jobs.ensure_finished(job)
        raise ResultGone(f"the job {job.status}: it has no result", status=job.status)
    path = storage.path(job.result_location) if job.files_deleted_at is None else None
    if path is None:
        raise ResultGone("the result was deleted or has expired")
    extension = job.result_location.rsplit(".", 1)[-1]
    return FileResponse(
        path,
        media_type=job.result_content_type,
        filename=f"{job.public_id}.{extension}",
        headers={"Cache-Control": "private, no-store"},
    )


@router.delete("/jobs/{job_id}", response_model=JobRead)
def delete_job_files(job_id: str, session: SessionDep, principal: Writer, storage: StorageDep) -> JobRead:
    """Deletes the job's input and result files now; the job record and its charges stay (the money trail)."""
    job = _own_job(session, principal, job_id)
    jobs.ensure_finished(job)
    job = jobs.mark_files_deleted(session, job_id=job.id)
    session.commit()
    storage.delete_prefix(job.input_location)
    if job.result_location:
        storage.delete(job.result_location)
    return JobRead.from_row(job)


@router.get("/jobs/{job_id}/webhooks", response_model=list[WebhookEventRead])
def list_job_webhooks(job_id: str, session: SessionDep, principal: Reader) -> list[WebhookEventRead]:
    job = _own_job(session, principal, job_id)
    return webhook_service.list_deliveries(session, job_id=job.id)


@router.get("/usage", response_model=UsageRead)
def get_usage(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Scope.usage_read))],
    start: date | None = None,
    end: date | None = None,
) -> UsageRead:
    """Charges (captured tokens) by UTC day and operation, `start` to `end` inclusive (default: the last 30 days)."""
    end = end or datetime.now(UTC).date()
    start = start or end - timedelta(days=29)
    if start > end or (end - start).days > 366:
        raise InvalidSwapRequest("`start` must be on or before `end`, at most 366 days apart")
    rows = job_queries.usage(session, user_id=principal.user_id, start=start, end=end)
    items = [UsageRow(day=r.day, operation=r.operation, jobs=r.jobs, tokens=r.tokens) for r in rows]
    return UsageRead(start=start, end=end, total_tokens=sum(i.tokens for i in items), items=items)
