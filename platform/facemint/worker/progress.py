"""A running video's progress as its worker writes it: the engine reports frames done after every batch; the job
row (and with it GET /v1/jobs/{id}, the console and `job.progress` webhooks) learns it at most once per
`interval`. The settlement writes the final figures whatever this left unwritten."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from facemint.db import unit_of_work
from facemint.jobs import service as jobs

logger = logging.getLogger("facemint.worker")

WRITE_INTERVAL_SECONDS = 1.0


class Progress:
    """The `progress(frames_done, frames_total)` callback a video swap is given. Every report is remembered (a
    cancel bills what the last one says); one is written to the job when `interval` has passed since the last
    write, the first at once. A write that fails is logged and skipped: progress is advisory, never a reason to
    stop the job."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        job_id: int,
        attempt: int,
        interval: float = WRITE_INTERVAL_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._attempt = attempt
        self._interval = interval
        self._lock = threading.Lock()
        self._written_at = float("-inf")
        self.frames_done = 0
        self.frames_total = 0

    def __call__(self, frames_done: int, frames_total: int) -> None:
        with self._lock:
            # The engine's total is a count of the frames it will decode; never let a report pass it.
            self.frames_total = max(frames_total, frames_done, 0)
            self.frames_done = max(frames_done, 0)
            now = time.monotonic()
            if now - self._written_at < self._interval:
                return
            self._written_at = now
            done, total = self.frames_done, self.frames_total
            try:
                with unit_of_work(self._sessions) as session:
                    jobs.record_progress(
                        session, job_id=self._job_id, attempt=self._attempt, frames_done=done, frames_total=total
                    )
            except Exception:
                logger.warning("could not record the progress of job %s", self._job_id, exc_info=True)
