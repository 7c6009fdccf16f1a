"""Jobs for the admin and console tests, made through the services exactly as a submit and a worker make them,
without a worker: a queued job (its hold reserved), a succeeded one (its result stored, its hold captured), a
running video, and a webhook attempt recorded by the sender's own code."""

from __future__ import annotations

import io
import uuid
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from facemint.config import Settings
from facemint.jobs import files
from facemint.jobs import service as jobs
from facemint.jobs.submission import SWAP_OPERATION
from facemint.storage import Storage
from facemint.users.orm import User
from facemint.webhooks import sender
from facemint.webhooks.sender import Outcome


def result_png(width: int = 640, height: int = 480) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def queued_job(session: Session, settings: Settings, owner: User, *, webhook_url: str | None = None) -> Any:
    """A job as a submit records it: queued, its price held on the owner's account (committed)."""
    assert owner.tenant_id is not None
    public_id = jobs.new_public_id()
    outcome = jobs.submit(
        session,
        request=jobs.SubmitRequest(
            public_id=public_id,
            tenant_id=owner.tenant_id,
            user_id=owner.id,
            api_key_id=None,
            account_id=owner.account_id,
            operations=(SWAP_OPERATION,),
            queue=settings.queue_name,
            units=1,
            idempotency_key=f"admin-test-{uuid.uuid4().hex}",
            request_hash=b"admin-test",
            options={"output_format": "png"},
            input_location=f"inputs/{public_id}",
            webhook_url=webhook_url,
            max_attempts=2,
            deadline_seconds=settings.job_deadline_seconds,
        ),
    )
    session.commit()
    return outcome.job


def succeeded_job(
    session: Session, settings: Settings, storage: Storage, owner: User, *, webhook_url: str | None = None
) -> Any:
    """A job a worker ran: claimed, its result stored, completed (the hold captured), committed."""
    job = queued_job(session, settings, owner, webhook_url=webhook_url)
    running = jobs.claim(session, public_id=job.public_id, worker_id="admin-test-worker")
    assert running is not None
    session.commit()  # as a worker does: the claim, then (later) the completion
    key = files.attempt_result_key(job.public_id, running.attempts, "png")
    data = result_png()
    storage.put(key, data)
    done = jobs.complete(
        session,
        job_id=job.id,
        attempt=running.attempts,
        result_location=key,
        content_type="image/png",
        size_bytes=len(data),
        timings_ms={"detect": 12.5, "swap": 40.0},
        result_ttl_seconds=3600,
    )
    assert done is not None
    session.commit()
    return done


def failed_webhook_attempt(session: Session, settings: Settings, *, status: int = 503) -> None:
    """One delivery attempt of every due webhook event, answered `status` (recorded by the sender's own code)."""
    for claim in sender.claim_due(session, slots=50, max_in_flight_per_tenant=50, lease_seconds=30):
        sender.record_outcome(
            session, claim, Outcome(response_status=status, error=None, duration_ms=7.0), settings=settings
        )
    session.commit()


VIDEO_PROBE = {
    "container": "mp4",
    "duration_seconds": 3.0,
    "fps": 10.0,
    "variable_frame_rate": False,
    "frame_count": 30,
    "width": 192,
    "height": 144,
    "rotation": 0,
    "video_codec": "h264",
    "pixel_format": "yuv420p",
    "has_audio": True,
    "audio_codec": "aac",
    "size_bytes": 40_000,
}


def running_video_job(session: Session, settings: Settings, owner: User) -> Any:
    """A 3-second video job a worker claimed (its hold of 3 seconds reserved), committed, with no progress yet."""
    assert owner.tenant_id is not None
    public_id = jobs.new_public_id()
    jobs.submit(
        session,
        request=jobs.SubmitRequest(
            public_id=public_id,
            tenant_id=owner.tenant_id,
            user_id=owner.id,
            api_key_id=None,
            account_id=owner.account_id,
            operations=("swap.video",),
            queue=settings.queue_name,
            units=3,
            idempotency_key=f"admin-test-{uuid.uuid4().hex}",
            request_hash=b"admin-test",
            options={
                "media": "video",
                "output_format": "mp4",
                "probe": VIDEO_PROBE,
                "trim": {"start": 0.0, "end": 3.0},
                "processors": ["face_swapper"],
                "faces": "largest",
            },
            input_location=f"inputs/{public_id}",
            webhook_url=None,
            max_attempts=2,
            deadline_seconds=settings.job_deadline_seconds,
        ),
    )
    running = jobs.claim(session, public_id=public_id, worker_id="admin-test-worker")
    assert running is not None
    session.commit()
    return running
