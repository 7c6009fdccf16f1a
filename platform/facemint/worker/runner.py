"""`facemint worker`: long-lived, non-forking workers with the engine loaded once and kept warm.

RQ's default worker forks a work-horse per job, which reloads the models and breaks CUDA contexts; a
`SimpleWorker` runs each job in its own process instead. `--concurrency N` starts N such processes (each with
its own warm engine) under a supervisor that restarts one that dies. Every worker also runs, in background
threads, the sweeper, the sealer, the webhook sender, the Zendesk replies, its heartbeat (for /metrics), the periodic
reconciliation (one worker at a time, every `reconcile_interval_seconds`) and the recurring grants' scheduler
(every `grant_interval_seconds`, `facemint.worker.granting`)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from sqlalchemy import Engine

from billing.sealing import service as sealing
from facemint import metrics, tracing
from facemint.config import Settings
from facemint.db import make_engine, make_sessionmaker, unit_of_work
from facemint.integrations.zendesk.replies import ReplySender
from facemint.reports import service as reports
from facemint.storage import make_storage
from facemint.webhooks.sender import WebhookSender
from facemint.worker import granting, sweeper, tasks

logger = logging.getLogger("facemint.worker")
# How often a worker looks whether the periodic reconciliation is due (one indexed read): a run is then at most
# this late, however the workers' starts fall.
RECONCILE_CHECK_SECONDS = 60.0


def load_engine(settings: Settings) -> object:
    from facemint.cli.engine_commands import engine_config
    from inference.engine import Engine

    return Engine.load(engine_config(settings))


class WarmWorker(SimpleWorker):
    """RQ's SimpleWorker (each job in this process: no fork, the engine stays loaded and CUDA intact) whose command
    listener wakes every second. RQ's waits 60 s, and stopping the worker waits for that listener: a worker asked
    to stop (SIGTERM, the end of a burst) could take a minute to go."""

    def subscribe(self) -> None:
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ annotates it None
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )


def run_worker(settings: Settings, *, queues: list[str], burst: bool = False, engine: object | None = None) -> None:
    database_url, redis_url = settings.require_urls()
    tracing.configure(settings, component="worker")
    db_engine = make_engine(database_url, pool_size=4)
    # RQ blocks on BLMOVE for up to its dequeue timeout: no socket timeout on its connection. Everything else (the
    # sweeper's dispatcher, notifications, metrics) uses one with a timeout, so a hung Redis cannot hold the
    # dispatcher's row locks (and with them cancels and deadlines) for ever.
    queue_redis = Redis.from_url(redis_url, socket_connect_timeout=2, health_check_interval=30)
    redis = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
    context = tasks.WorkerContext(
        settings=settings,
        sessions=make_sessionmaker(db_engine),
        redis=redis,
        storage=make_storage(settings),
        engine=engine if engine is not None else load_engine(settings),
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
    )
    tasks.install(context)
    background = [
        sweeper.Periodic("sweeper", settings.sweep_interval_seconds, lambda: sweeper.sweep_once(context)),
        sweeper.Periodic("sealer", settings.seal_interval_seconds, lambda: _seal(context)),
        sweeper.Periodic("heartbeat", settings.worker_heartbeat_seconds, lambda: _beat(context)),
        # Zendesk replies of settled swaps (facemint.integrations.zendesk.replies), retried with backoff.
        sweeper.Periodic(
            "zendesk-replies",
            settings.zendesk_poll_seconds,
            ReplySender(context.sessions, settings=settings, storage=context.storage).run_once,
        ),
    ]
    if settings.reconcile_interval_seconds > 0:
        check_every = min(settings.reconcile_interval_seconds, RECONCILE_CHECK_SECONDS)
        background.append(sweeper.Periodic("reconciler", check_every, lambda: _reconcile(context, db_engine)))
    if settings.grant_interval_seconds > 0:
        background.append(
            sweeper.Periodic(
                "grants",
                settings.grant_interval_seconds,
                lambda: granting.grant_once(context.sessions, chunk_size=settings.grant_chunk_size),
            )
        )
    # Concurrent and fair across tenants (see facemint.webhooks.sender); looks for due events every second.
    webhook_sender = WebhookSender(context.sessions, settings=settings)
    for thread in background:
        thread.start()
    webhook_sender.start()
    logger.info("worker %s ready on queues %s", context.worker_id, ", ".join(queues))
    try:
        while True:
            try:
                worker = WarmWorker([Queue(name, connection=queue_redis) for name in queues], connection=queue_redis)
                worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
                return
            except (RedisConnectionError, RedisTimeoutError):
                # Redis went away: jobs stay safe in Postgres (the sweeper keeps working); wait and reconnect.
                logger.warning("Redis unavailable; reconnecting in 1s")
                time.sleep(1)
    finally:
        # Attempts in flight finish and record their outcomes (bounded by one deadline) before the pool goes.
        webhook_sender.stop()
        for thread in background:
            thread.stop()
        for thread in background:  # a round in progress finishes before its connections go
            thread.join(timeout=10)
        try:
            metrics.forget_worker(redis, context.worker_id)
        except RedisError:
            logger.warning("could not remove this worker's heartbeat; it ages out of /metrics in an hour")
        db_engine.dispose()
        tracing.flush()  # a burst worker exits next


def _seal(context: tasks.WorkerContext) -> None:
    """Seal finished ledger entries and audit events; a worker that finds another sealing skips its turn."""
    with unit_of_work(context.sessions) as session:
        sealing.seal_all(session, max_rows=context.settings.seal_batch_max_rows, wait=False)


def _beat(context: tasks.WorkerContext) -> None:
    try:
        metrics.record_worker_heartbeat(context.redis, context.worker_id)
    except RedisError as exc:  # every few seconds while Redis is away: one line each, no traceback
        logger.warning("could not record this worker's heartbeat: %s", exc)


def _reconcile(context: tasks.WorkerContext, db_engine: Engine) -> None:
    """Reconcile and record the run when the newest recorded one is `reconcile_interval_seconds` old."""
    with unit_of_work(context.sessions) as session:
        run = reports.reconcile_when_due(
            session, engine=db_engine, interval_seconds=context.settings.reconcile_interval_seconds
        )
    if run is None:
        return
    if run.balanced:
        logger.info("reconciliation run %d: the books balance", run.id)
    else:
        logger.error("reconciliation run %d: %d check(s) failed; see facemint reconcile", run.id, run.discrepancies)


def supervise(argv: list[str], concurrency: int) -> None:
    """Start `concurrency` single-process workers and keep them running until SIGINT/SIGTERM."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "facemint.cli.main", "worker", *argv, "--concurrency", "1"])

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children.extend(start() for _ in range(concurrency))
    while not stopping:
        time.sleep(0.5)
        for index, child in enumerate(children):
            if child.poll() is not None and not stopping:
                logger.warning("worker %s exited with %s; starting another", child.pid, child.returncode)
                children[index] = start()
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
