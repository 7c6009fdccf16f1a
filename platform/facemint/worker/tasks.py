"""The job an RQ worker runs: `run_job(public_id)`. The queue entry carries only the public id; everything else
comes from Postgres, which decides (a claim) whether this run may happen at all.

The engine and connections live in a process-wide `WorkerContext` installed once by the worker at start-up
(`install`), so a job never loads models: the worker is long-lived and warm.

A video job (`options.media == "video"`) streams its target from storage through `engine.swap_video` into the
storage's staging file for its result, reporting progress (worker.progress). A cancel stops it at the next
batch: the engine closes a playable MP4 of the frames done, which becomes the job's result, and the job is
charged for the started seconds it processed (`jobs.cancel_with_partial_result`; none processed: released)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from facemint import log_setup, metrics, tracing
from facemint.abuse import checks as abuse_checks
from facemint.balance_alerts import evaluation as balance_alerts
from facemint.config import Settings
from facemint.db import unit_of_work
from facemint.jobs import files, queue, video_metering
from facemint.jobs import frozen as frozen_jobs
from facemint.jobs import queries as job_queries
from facemint.jobs import service as jobs
from facemint.jobs.orm import TERMINAL_STATUSES, JobStatus
from facemint.storage import ObjectMissing, Storage
from facemint.worker.progress import Progress
from inference.errors import EngineError
from inference.selection import FaceSelection
from inference.video import Trim

logger = logging.getLogger("facemint.worker")
T = TypeVar("T")


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    storage: Storage
    engine: Any  # inference.engine.Engine, or anything with the same `swap` and `swap_video`
    worker_id: str
    orphans_swept_at: float = float("-inf")  # time.monotonic() of the last orphan sweep (see worker.sweeper)


_context: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _context
    _context = context


def current() -> WorkerContext:
    if _context is None:
        raise RuntimeError("run_job runs inside `facemint worker`, which installs the engine first")
    return _context


class StopJob(Exception):
    """Raised at a stage boundary: the job was canceled, or it is no longer this attempt's to run."""


class Heartbeat(threading.Thread):
    """Proves the attempt is alive (the sweeper takes back jobs whose heartbeat stops) and learns about cancels."""

    def __init__(self, context: WorkerContext, *, job_id: int, attempt: int) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.context = context
        self.job_id = job_id
        self.attempt = attempt
        self.stop_requested = threading.Event()
        self.should_abort = threading.Event()
        self.cancel_requested = threading.Event()  # what should_abort is for: a cancel (else: not ours any more)
        self._done = threading.Event()
        # A thread starts with an empty context: this one logs under the job's fields (log_setup), taken here, on
        # the job's thread.
        self._log_context = contextvars.copy_context()

    def run(self) -> None:
        self._log_context.run(self._beat)

    def _beat(self) -> None:
        interval = self.context.settings.job_heartbeat_seconds
        while not self._done.wait(interval):
            try:
                with unit_of_work(self.context.sessions) as session:
                    ours, cancel = jobs.heartbeat(session, job_id=self.job_id, attempt=self.attempt)
            except Exception:  # a database blip: the next beat tries again; the sweeper waits for several misses
                logger.warning("heartbeat for job %s failed", self.job_id, exc_info=True)
                continue
            if ours and cancel:
                self.cancel_requested.set()
            if not ours or cancel:
                self.should_abort.set()

    def finish(self) -> None:
        self._done.set()


def run_job(public_id: str) -> str:
    """Claim, run, settle. Returns what happened (RQ keeps no result: `result_ttl=0`). Every line logged meanwhile
    names the job (and, once claimed, the attempt, tenant and user); with tracing on, all of it is one consumer
    span, a child of the trace its queue entry carries."""
    with log_setup.log_scope(job_id=public_id), tracing.job_span(public_id) as span:
        outcome = _claim_and_run(public_id)
        tracing.annotate(span, {"facemint.outcome": outcome})
        return outcome


def _claim_and_run(public_id: str) -> str:
    context = current()
    job = _claim(context, public_id)
    if job is None:
        if _with_retry(context, lambda s: frozen_jobs.release_if_owner_frozen(s, public_id=public_id), what="release"):
            logger.info("job %s released without running: its account is frozen", public_id)
            _notify(context, public_id, "canceled")
            return "canceled"
        logger.info("job %s is not claimable (already running, finished or canceled): skipped", public_id)
        return "skipped"
    attempt = job.attempts
    log_setup.bind(attempt=attempt, tenant_id=job.tenant_id, user_id=job.user_id)
    video = VideoRun(context, job, attempt) if job.options.get("media") == "video" else None
    heartbeat = Heartbeat(context, job_id=job.id, attempt=attempt)
    heartbeat.start()
    delay = context.settings.debug_job_delay_seconds

    def checkpoint(stage: str) -> None:
        nonlocal delay
        # The test aid's pause: at the first stage boundary; a video's at the first batch boundary after frames
        # were done, so a test can cancel or kill it mid-video.
        if delay and (video is None or video.progress.frames_done > 0):
            until = time.monotonic() + delay
            delay = 0.0
            while time.monotonic() < until and not heartbeat.should_abort.is_set():
                time.sleep(0.02)
        if heartbeat.should_abort.is_set():
            raise StopJob(stage)

    try:
        outcome = _run(context, job, attempt, checkpoint, heartbeat, video)
    finally:
        heartbeat.finish()
    _after_settlement(context, job, outcome)
    return outcome


def _claim(context: WorkerContext, public_id: str) -> Any:
    """queued -> running for this worker; None when the job is not (or no longer) its to run.

    A claim whose commit landed but whose reply was lost is retried, and the retry is refused: the job is running
    already. If it runs under this worker's id, it is that very claim (a worker runs one job at a time, and its id
    names the process), so the run goes ahead, instead of leaving the job to the sweeper's stale check (an
    attempt lost, and `job_stale_after_seconds` of waiting; the job's last attempt failed without having run)."""
    tries = 0

    def claim(session: Session) -> Any:
        nonlocal tries
        tries += 1
        row = jobs.claim(session, public_id=public_id, worker_id=context.worker_id)
        if row is None and tries > 1:
            row = job_queries.get_running_under(session, public_id=public_id, worker_id=context.worker_id)
        return row

    return _with_retry(context, claim, what="claim")


@dataclass(frozen=True, slots=True)
class Output:
    """What an attempt produced, stored under `key` and not settled yet."""

    key: str
    content_type: str
    size_bytes: int
    timings_ms: dict[str, float]
    frames_done: int | None = None  # a video's
    frames_total: int | None = None


def _run(
    context: WorkerContext,
    job: Any,
    attempt: int,
    checkpoint: Callable[[str], None],
    heartbeat: Heartbeat,
    video: VideoRun | None,
) -> str:
    failure: tuple[str, str, str] | None = None  # (how, code, detail)
    try:
        output = video.swap(checkpoint) if video is not None else _swap_image(context, job, attempt, checkpoint)
    except StopJob as stop:
        if video is not None and heartbeat.cancel_requested.is_set():
            return video.settle_cancel()
        failure = ("cancel", "canceled", f"canceled by the caller; stopped before the {stop} stage")
    except abuse_checks.FrozenByRule as frozen:
        # Stopped before the swap began: released in full, like the account's other queued jobs.
        failure = ("cancel", frozen_jobs.FROZEN_CODE, str(frozen))
    except ObjectMissing:
        # Inputs are deleted only once a job is finished: a missing input means this run is stale.
        failure = ("fail", "input_missing", "the job's inputs are gone")
    except EngineError as exc:
        failure = ("fail" if exc.input_error else "retry", exc.code, exc.detail)
    except Exception as exc:  # the infrastructure failed (engine runtime, storage, memory): retried, bounded
        logger.exception("job %s attempt %s failed", job.public_id, attempt)
        # Only the kind of failure reaches the customer (job, webhook): the message may name server paths; the
        # log above has it whole.
        failure = ("retry", "worker_error", f"the worker failed ({type(exc).__name__}); retried within the budget")
    finally:
        if video is not None:
            video.discard_staging()
    if failure is not None:
        how, code, detail = failure
        if how == "retry":
            return _retry_or_fail(context, job, attempt, code=code, detail=detail)
        status = JobStatus.canceled if how == "cancel" else JobStatus.failed
        settled = _with_retry(
            context,
            _settling(lambda s: jobs.fail(s, job_id=job.id, attempt=attempt, code=code, detail=detail, status=status)),
            what=how,
        )
        return status.value if settled is not None else "lost"

    if context.settings.debug_pause_before_settle_seconds:  # test aid (refused in prod): a window to kill us in
        time.sleep(context.settings.debug_pause_before_settle_seconds)
    settled = _with_retry(
        context,
        _settling(
            lambda s: jobs.complete(
                s,
                job_id=job.id,
                attempt=attempt,
                result_location=output.key,
                content_type=output.content_type,
                size_bytes=output.size_bytes,
                timings_ms=output.timings_ms,
                result_ttl_seconds=context.settings.result_ttl_seconds,
                frames_done=output.frames_done,
                frames_total=output.frames_total,
                synchronous_commit=context.settings.holds_synchronous_commit,
            )
        ),
        what="capture",
    )
    # A video's stages (whole seconds of work, or sums over its frames) get series of their own: mixed into the
    # images' histograms they would drown them.
    _record_timings(
        context, output.timings_ms if video is None else {f"video_{k}": v for k, v in output.timings_ms.items()}
    )
    if settled is not None:
        return "succeeded"
    # Not ours any more (swept, canceled meanwhile, or a commit whose answer was lost).
    final = _with_retry(context, lambda s: job_queries.get_by_id(s, job_id=job.id), what="read")
    if final is not None and final.status == "running" and final.attempts == attempt and final.cancel_requested_at:
        # Still this attempt's: the capture refused it because a cancel arrived after the last stage boundary.
        # Settle it canceled now rather than leave it for the sweeper: an image is never charged; a video was
        # processed whole, so the cancel rule charges every second of it and keeps the result.
        if video is not None:
            return video.settle_cancel_after_finish(output)
        context.storage.delete(output.key)
        canceled = _with_retry(
            context,
            _settling(
                lambda s: jobs.fail(
                    s,
                    job_id=job.id,
                    attempt=attempt,
                    code="canceled",
                    detail="canceled by the caller; stopped before the capture",
                    status=JobStatus.canceled,
                )
            ),
            what="cancel",
        )
        return "canceled" if canceled is not None else "lost"
    return _kept_if_settled(context, final, output.key)


def _kept_if_settled(context: WorkerContext, final: Any, key: str) -> str:
    """After a settlement that changed nothing: the job's status if it did end with this result (the settlement's
    commit landed and only its reply was lost; the file stays), else "lost" (the file goes)."""
    if final is not None and final.result_location == key:
        return str(final.status)
    context.storage.delete(key)
    return "lost"


def _swap_image(context: WorkerContext, job: Any, attempt: int, checkpoint: Callable[[str], None]) -> Output:
    options = job.options
    source = context.storage.get(f"{job.input_location}/source")
    target = context.storage.get(f"{job.input_location}/target")
    reference = context.storage.get(f"{job.input_location}/reference") if options.get("has_reference") else None
    with tracing.engine_span("swap_image", job.public_id) as span:
        result = context.engine.swap(
            source,
            target,
            faces=_faces(options),
            reference=reference,
            output_format=options["output_format"],
            quality=options["quality"],
            processors=_processors(options),
            checkpoint=checkpoint,
            on_source_face=_source_face_check(context, job),
        )
        tracing.record_stages(span, result.timings_ms, sequential=True)
    key = files.attempt_result_key(job.public_id, attempt, result.format)
    context.storage.put(key, result.image)
    return Output(key=key, content_type=result.content_type, size_bytes=len(result.image), timings_ms=result.timings_ms)


def _source_face_check(context: WorkerContext, job: Any) -> Callable[[Any], None] | None:
    """The abuse rules' same-face check, run by the engine once it has the source face's embedding."""
    return abuse_checks.source_face_check(redis=context.redis, sessions=context.sessions, job=job)


def _faces(options: dict[str, Any]) -> FaceSelection:
    return FaceSelection.parse(options["faces"], threshold=options.get("threshold", 0.5))


def _processors(options: dict[str, Any]) -> tuple[str, ...]:
    return tuple(options.get("processors") or ("face_swapper",))  # jobs from before processors: the swap alone


class VideoRun:
    """One attempt at a video job: the swap into the result's staging file, and the settlements only a video has
    (a cancel that charges the seconds processed)."""

    def __init__(self, context: WorkerContext, job: Any, attempt: int) -> None:
        self.context = context
        self.job = job
        self.attempt = attempt
        self.key = files.attempt_result_key(job.public_id, attempt, job.options.get("output_format", "mp4"))
        self.progress = Progress(context.sessions, job_id=job.id, attempt=attempt)
        self.staging: Path | None = None

    def swap(self, checkpoint: Callable[[str], None]) -> Output:
        options, storage = self.job.options, self.context.storage
        source = storage.get(f"{self.job.input_location}/source")
        reference = storage.get(f"{self.job.input_location}/reference") if options.get("has_reference") else None
        self.staging = storage.staging_path(self.key)
        # The decoder seeks in the video, so it reads a local file: the stored one on disk, a download from S3
        # (raises ObjectMissing when the input is gone).
        with (
            storage.local_copy(f"{self.job.input_location}/target") as target,
            tracing.engine_span("swap_video", self.job.public_id) as span,
        ):
            result = self.context.engine.swap_video(
                source,
                target,
                self.staging,
                faces=_faces(options),
                reference=reference,
                trim=Trim(start=options["trim"]["start"], end=options["trim"]["end"]),
                processors=_processors(options),
                crf=options.get("crf", self.context.settings.video_crf),
                progress=self.progress,
                checkpoint=checkpoint,
                on_source_face=_source_face_check(self.context, self.job),
            )
            tracing.record_stages(span, result.timings_ms, sequential=False)
        self._store()
        return Output(
            key=self.key,
            content_type=result.content_type,
            size_bytes=result.size_bytes,
            timings_ms=result.timings_ms,
            frames_done=result.frames_done,
            frames_total=result.frames_total,
        )

    def _store(self) -> None:
        assert self.staging is not None
        self.context.storage.put_file(self.key, self.staging)
        self.staging = None

    def discard_staging(self) -> None:
        """The staging file of a run that stored nothing (failed, or stopped before a frame)."""
        if self.staging is not None:
            self.staging.unlink(missing_ok=True)
            self.staging = None

    def seconds_done(self, frames_done: int, frames_total: int) -> int:
        trim = self.job.options["trim"]
        return video_metering.processed_seconds(
            frames_done=frames_done,
            frames_total=frames_total,
            seconds_total=float(trim["end"]) - float(trim["start"]),
            units=self.job.units,
        )

    def settle_cancel(self) -> str:
        """The cancel stopped the engine between batches, and the engine closed the staging file as a playable MP4
        of the frames done (as of the last progress report). That is the result, charged by the second; with no
        frame done, the job is canceled and released in full."""
        done, total = self.progress.frames_done, self.progress.frames_total
        seconds = self.seconds_done(done, total)
        if seconds == 0 or self.staging is None or not self.staging.is_file():
            self.discard_staging()
            canceled = _with_retry(
                self.context,
                _settling(
                    lambda s: jobs.fail(
                        s,
                        job_id=self.job.id,
                        attempt=self.attempt,
                        code="canceled",
                        detail="canceled by the caller before any frame was processed; nothing charged",
                        status=JobStatus.canceled,
                    )
                ),
                what="cancel",
            )
            return "canceled" if canceled is not None else "lost"
        size = self.staging.stat().st_size
        self._store()
        output = Output(
            key=self.key, content_type="video/mp4", size_bytes=size, timings_ms={}, frames_done=done, frames_total=total
        )
        return self._settle_partial(output, seconds)

    def settle_cancel_after_finish(self, output: Output) -> str:
        """A cancel that arrived after the last batch: every frame was processed, so every second is charged."""
        done = output.frames_done or 0
        return self._settle_partial(output, self.seconds_done(done, output.frames_total or done))

    def _settle_partial(self, output: Output, seconds: int) -> str:
        settled = _with_retry(
            self.context,
            _settling(
                lambda s: jobs.cancel_with_partial_result(
                    s,
                    job_id=self.job.id,
                    attempt=self.attempt,
                    seconds=seconds,
                    frames_done=output.frames_done or 0,
                    frames_total=output.frames_total or 0,
                    result_location=output.key,
                    content_type=output.content_type,
                    size_bytes=output.size_bytes,
                    timings_ms=output.timings_ms,
                    result_ttl_seconds=self.context.settings.result_ttl_seconds,
                    synchronous_commit=self.context.settings.holds_synchronous_commit,
                )
            ),
            what="capture",
        )
        if settled is not None:
            return "canceled"
        final = _with_retry(self.context, lambda s: job_queries.get_by_id(s, job_id=self.job.id), what="read")
        return _kept_if_settled(self.context, final, output.key)


def _retry_or_fail(context: WorkerContext, job: Any, attempt: int, *, code: str, detail: str) -> str:
    row = _with_retry(
        context,
        _settling(lambda s: jobs.retry(s, job_id=job.id, attempt=attempt, code=code, detail=detail)),
        what="retry",
    )
    if row is None:
        return "lost"
    if row.status == "queued":
        # Not queued from here: this run's own queue entry (the same id) stays `started` until run_job returns,
        # so an enqueue now would keep it as live and add nothing. `retry` left `dispatched_at` NULL: the
        # sweeper's dispatch queues the job on its next round (within `sweep_interval_seconds`).
        return "retried"
    return "failed"


def _after_settlement(context: WorkerContext, job: Any, outcome: str) -> None:
    if outcome not in TERMINAL_STATUSES:
        return
    try:
        final = _with_retry(context, lambda s: job_queries.get_by_id(s, job_id=job.id), what="read")
        if final is not None:
            # The inputs, and any result an earlier attempt stored but never settled; the settled result stays.
            files.purge_finished(context.storage, final, keep=final.result_location)
            _with_retry(context, lambda s: jobs.mark_inputs_deleted(s, job_ids=[job.id]), what="inputs")
    except Exception:  # the sweeper purges and marks it later
        logger.warning("could not purge the inputs of %s", job.public_id, exc_info=True)
    _notify(context, job.public_id, outcome)


def _notify(context: WorkerContext, public_id: str, outcome: str) -> None:
    with contextlib.suppress(RedisError):  # waiters re-check Postgres every second
        queue.notify_finished(context.redis, public_id=public_id, status=outcome)


def _record_timings(context: WorkerContext, timings_ms: dict[str, float]) -> None:
    with contextlib.suppress(RedisError):  # metrics never fail a job
        metrics.record_stage_timings(context.redis, timings_ms)


def _settling(settle: Callable[[Session], Row[Any] | None]) -> Callable[[Session], Row[Any] | None]:
    """A settlement, then the low-balance alerts of the job's account in the same transaction: a capture brings
    the drop its hold made at submit to the alerts (the submit path evaluates none), a release may re-arm one. A
    retry that queued the job again moved no tokens: nothing to evaluate."""

    def run(session: Session) -> Row[Any] | None:
        row = settle(session)
        if row is not None and row.status in TERMINAL_STATUSES:
            balance_alerts.evaluate_accounts(session, account_ids=[row.account_id])
        return row

    return run


def _with_retry(context: WorkerContext, work: Callable[[Session], T], *, what: str) -> T:
    """One transaction, retried while Postgres is unreachable (a restart, a failover) up to the job deadline.

    Every transition is guarded by the state it moves from, so repeating one whose commit did land (the answer
    was lost with the connection) changes nothing the second time."""
    give_up = time.monotonic() + context.settings.job_deadline_seconds
    pause = 0.1
    with tracing.span(f"job.{what}"):  # the claim, the settlement (capture, release) and the reads around them
        while True:
            try:
                with unit_of_work(context.sessions) as session:
                    return work(session)
            except (OperationalError, DBAPIError) as exc:
                if not (isinstance(exc, OperationalError) or exc.connection_invalidated) or time.monotonic() > give_up:
                    raise
                logger.warning("database unavailable during %s; retrying in %.1fs", what, pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
