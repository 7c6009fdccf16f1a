from __future__ import annotations

from facemint.errors import FacemintError, RateLimited


class JobNotFound(FacemintError):
    status_code = 404
    code = "job_not_found"
    title = "Job not found"


class JobAlreadyFinished(FacemintError):
    status_code = 409
    code = "job_already_finished"
    title = "Job already finished"


class JobNotFinished(FacemintError):
    status_code = 409
    code = "job_not_finished"
    title = "Job not finished"


class ResultGone(FacemintError):
    status_code = 410
    code = "result_gone"
    title = "Result deleted or expired"


class IdempotencyKeyReused(FacemintError):
    status_code = 409
    code = "idempotency_key_reused"
    title = "Idempotency key reused with a different request"


class QueueUnavailable(FacemintError):
    status_code = 503
    code = "queue_unavailable"
    title = "Job queue unavailable"


class InvalidSwapRequest(FacemintError):
    status_code = 422
    code = "invalid_swap_request"
    title = "Invalid swap request"


class InvalidPreferWait(FacemintError):
    status_code = 400
    code = "invalid_prefer_header"
    title = "Invalid Prefer header"


class TooManyActiveJobs(RateLimited):
    code = "too_many_active_jobs"
    title = "Too many jobs queued or running"


class TooManyWaits(RateLimited):
    code = "too_many_waits"
    title = "Too many requests waiting"


class ResultRangeNotSatisfiable(FacemintError):
    """A Range request none of whose ranges starts within the result (RFC 9110: 416, `Content-Range: */size`)."""

    status_code = 416
    code = "range_not_satisfiable"
    title = "Range not satisfiable"


class ThumbnailNotFound(FacemintError):
    """The job's result is a video: previews are made of images only (a video is never decoded to preview it)."""

    status_code = 404
    code = "thumbnail_not_found"
    title = "No thumbnail for this result"
