"""The swap-submit flow: store the inputs, record the job and hold its price (or replay the job this idempotency
key already made), and queue it once the request's transaction has committed.

It spans the queue, storage and the ledger, so it lives here rather than in the endpoint; the request boundary
commits, and what must follow the commit (the queue entry) runs as an after-commit step. A commit that fails
leaves the stored inputs in place on purpose: the commit may have landed (a lost reply), in which case the job
needs them; if it did not, the orphan sweep removes them.

A video target arrives as a file already written to the storage's staging path. It is probed before anything is
held (each bound its own 4xx, and then nothing is held or left stored), priced per started second of its trimmed
duration, and given a deadline (and its hold a lifetime) that grows with that duration."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import service as ledger
from billing.ledger.service import request_hash
from facemint import tracing
from facemint.abuse import checks as abuse_checks
from facemint.auth.principal import Principal
from facemint.config import Settings
from facemint.db import after_commit, after_rollback, unit_of_work
from facemint.jobs import queue
from facemint.jobs import service as jobs
from facemint.jobs.errors import InvalidSwapRequest, QueueUnavailable
from facemint.storage import Storage, input_prefix
from inference.processors import FACE_ENHANCER
from inference.video import VideoLimits, VideoProbe, probe_video, resolve_trim

SWAP_OPERATION = "swap.image"
VIDEO_FIELD = "target"  # the only input that may be a video


def price_operations(*, media: str, processors: Sequence[str]) -> tuple[str, ...]:
    """The price book operations a swap is priced by, per image or per started second of video: the swap, and
    the enhancer's own line when it runs."""
    kind = "video" if media == "video" else "image"
    return (f"swap.{kind}", f"enhance.{kind}") if FACE_ENHANCER in processors else (f"swap.{kind}",)


@dataclass(frozen=True, slots=True)
class StagedVideo:
    """A video target as uploaded: a local file at the storage's staging path for it, never held in memory."""

    path: Path
    container: str  # from the content: "mp4" (MP4, MOV, 3GP) or "matroska" (MKV, WebM)
    size_bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class SwapSubmission:
    """A checked swap request: its images (sniffed), its video target if it has one (staged), options as
    requested and checked, and the (SSRF-checked) webhook URL. `public_id` is the job it becomes (its inputs'
    prefix), unless the Idempotency-Key replays another."""

    public_id: str
    files: dict[str, bytes]
    options: dict[str, Any]
    webhook_url: str | None
    video: StagedVideo | None = None

    @property
    def media(self) -> str:
        return "video" if self.video is not None else "image"

    @property
    def operations(self) -> tuple[str, ...]:
        return price_operations(media=self.media, processors=self.options.get("processors", ()))

    @property
    def request_hash(self) -> bytes:
        """What tells a replay from a different request under the same Idempotency-Key: the operations, the
        options as requested (processors, trim, CRF, ...), the webhook and each file's SHA-256."""
        hashes = {name: hashlib.sha256(data).hexdigest() for name, data in self.files.items()}
        if self.video is not None:
            hashes[VIDEO_FIELD] = self.video.sha256
        if self.operations == (SWAP_OPERATION,):
            # A plain image swap hashes as it did before videos and processors existed, so a client retrying
            # across the deploy with the same Idempotency-Key gets its replay, not a 409.
            legacy = {k: v for k, v in self.options.items() if k not in ("processors", "media")}
            return request_hash(
                {
                    "operation": SWAP_OPERATION,
                    "options": legacy,
                    "webhook_url": self.webhook_url,
                    "files": dict(sorted(hashes.items())),
                }
            )
        return request_hash(
            {
                "operation": self.operations[0],
                "operations": list(self.operations),
                "options": self.options,
                "webhook_url": self.webhook_url,
                "files": dict(sorted(hashes.items())),
            }
        )


@dataclass(frozen=True, slots=True)
class VideoPlan:
    """What the probe decided for a video job: its units (started seconds of the trimmed duration), options and
    deadline."""

    probe: VideoProbe
    units: int
    options: dict[str, Any]
    deadline_seconds: int


def video_limits(settings: Settings) -> VideoLimits:
    return VideoLimits(
        max_bytes=settings.max_video_bytes,
        max_duration_seconds=settings.video_max_duration_seconds,
        max_pixels_per_frame=settings.video_max_pixels,
        max_fps=settings.video_max_fps,
        max_frames=settings.video_max_frames,
    )


def plan_video(swap: SwapSubmission, *, settings: Settings) -> VideoPlan:
    """Probe the staged video within the settings' bounds and resolve its trim (each refusal its own 4xx engine
    error); blocking and bounded, so callers run it on a thread."""
    assert swap.video is not None
    probe = probe_video(swap.video.path, limits=video_limits(settings))
    requested = swap.options.get("trim") or {}
    trim = resolve_trim(probe, trim_start=requested.get("start"), trim_end=requested.get("end"))
    options = {
        **swap.options,
        "media": "video",
        "output_format": "mp4",
        "probe": probe.as_dict(),
        "trim": {"start": trim.start, "end": trim.end},
    }
    # The work grows with the duration; so do the deadline and the hold's lifetime (which follows it).
    deadline = settings.job_deadline_seconds + math.ceil(settings.video_deadline_seconds_per_second * trim.seconds)
    return VideoPlan(probe=probe, units=trim.billable_seconds, options=options, deadline_seconds=deadline)


@dataclass(frozen=True, slots=True)
class SwapSubmitted:
    job: Any  # the jobs row
    replayed: bool
    available: int  # the caller's available tokens right after (the hold's own figure for a new job)


def submit_swap(
    session: Session,
    *,
    settings: Settings,
    redis: Redis,
    sessions: sessionmaker[Session],
    storage: Storage,
    principal: Principal,
    idempotency_key: str,
    swap: SwapSubmission,
) -> SwapSubmitted:
    if principal.tenant_id is None:
        raise InvalidSwapRequest("platform staff have no token account to run swaps; use a tenant user")
    try:
        # Checked before anything is written. If Redis fails between here and the enqueue, the job is recorded
        # and held, and the dispatcher queues it once Redis answers (or its deadline releases it).
        queue.ensure_reachable(redis)
    except RedisError as exc:
        raise QueueUnavailable(
            "the job queue is unavailable; nothing was recorded or held, retry later",
            headers={"Retry-After": "5"},
        ) from exc

    prefix = input_prefix(swap.public_id)
    # Whatever this request stored (or staged) goes if it does not commit.
    after_rollback(session, lambda: storage.delete_prefix(prefix))
    units, options, deadline_seconds = 1, {**swap.options, "media": "image"}, settings.job_deadline_seconds
    if swap.video is not None:
        # Probed before the job is recorded or anything held, and before any transaction: a refusal holds nothing.
        plan = plan_video(swap, settings=settings)
        units, options, deadline_seconds = plan.units, plan.options, plan.deadline_seconds
    with tracing.span("job.store_inputs", {"facemint.job_id": swap.public_id}):
        if swap.video is not None:
            storage.put_file(f"{prefix}/{VIDEO_FIELD}", swap.video.path, durable=False)
        for name, data in swap.files.items():
            storage.put(f"{prefix}/{name}", data, durable=False)
    # Records the job and holds its price, or replays the job this key made.
    with tracing.span("job.submit", {"facemint.job_id": swap.public_id, "facemint.units": units}) as span:
        outcome = jobs.submit(
            session,
            request=jobs.SubmitRequest(
                public_id=swap.public_id,
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                account_id=principal.account_id,
                operations=swap.operations,
                queue=settings.queue_name,
                units=units,
                idempotency_key=idempotency_key,
                request_hash=swap.request_hash,
                options=options,
                input_location=prefix,
                webhook_url=swap.webhook_url,
                max_attempts=settings.job_max_attempts,
                deadline_seconds=deadline_seconds,
                max_active_jobs=settings.max_active_jobs(principal.plan),
                synchronous_commit=settings.holds_synchronous_commit,
            ),
        )
        if span is not None:
            span.set_attributes(
                {"facemint.replayed": outcome.replayed, "facemint.tokens_held": outcome.job.tokens_held}
            )
    job = outcome.job
    if outcome.replayed:
        storage.delete_prefix(prefix)  # the job this key made has its own inputs
    else:
        # The tenant's abuse rules, counted and evaluated in one Redis call; a freeze refuses this submit (403).
        with tracing.span("job.abuse_check", {"facemint.job_id": swap.public_id}):
            abuse_checks.on_submit(
                session,
                redis=redis,
                sessions=sessions,
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                job_public_id=job.public_id,
                tokens=job.tokens_held,
            )
    if job.status == "queued":
        # A replay queues too: if the first request's commit landed but its reply was lost, it never queued the
        # job. The queue entry is unique per job, so a job already queued is not queued twice.
        after_commit(session, lambda: _enqueue(redis, sessions, job))
    available = outcome.available
    if available is None:
        available = ledger.get_balance(session, account_id=principal.account_id).available
    return SwapSubmitted(job=job, replayed=outcome.replayed, available=available)


def _run_timeout(job: Any) -> int:
    """RQ's limit for the job's run: up to its own deadline (a video's grows with its duration), plus a margin."""
    return queue.run_timeout((job.deadline_at - datetime.now(UTC)).total_seconds())


def _enqueue(redis: Redis, sessions: sessionmaker[Session], job: Any) -> None:
    try:
        # Run at the boundary's commit, under the request's span: the queue entry carries its trace to the worker.
        with tracing.publish_span(job.queue, job.public_id):
            queue.enqueue(
                redis,
                queue_name=job.queue,
                public_id=job.public_id,
                timeout_seconds=_run_timeout(job),
                meta=tracing.queue_meta(),
            )
    except RedisError:
        # Recorded and held, but not queued: the dispatcher queues it as soon as Redis answers again, or the
        # sweeper fails it and releases its tokens at its deadline. Either way the tokens are accounted for.
        with unit_of_work(sessions) as session:
            jobs.mark_undispatched(session, job_id=job.id)
