"""A small preview of a job's result for the console and /admin/v1: downsized on each request from the stored
result (nothing more is stored, so the thumbnail goes when the result goes)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from facemint.jobs.errors import ResultGone, ThumbnailNotFound
from facemint.jobs.schemas import has_result, is_video
from facemint.storage import ObjectMissing, Storage

MAX_SIDE = 256
# A result is at most the engine's output, but the decoder still refuses anything absurd rather than
# allocating it.
_MAX_PIXELS = 64_000_000


@dataclass(frozen=True, slots=True)
class Thumbnail:
    data: bytes
    content_type: str


def result_thumbnail(storage: Storage, job: Any, *, max_side: int = MAX_SIDE) -> Thumbnail:
    """The job's result at most `max_side` pixels a side: JPEG, or PNG where the image has transparency.
    410 `result_gone` when the job has no result (not succeeded, deleted, expired or purged); 404
    `thumbnail_not_found` for a video's result, which has none."""
    if not has_result(job):
        raise ResultGone("the job has no result to show" if job.result_location is None else "the result was deleted")
    if is_video(job):
        raise ThumbnailNotFound("a video's result has no thumbnail: its owner downloads it from /v1/jobs/{id}/result")
    try:
        data = storage.get(job.result_location)
    except ObjectMissing:
        raise ResultGone("the result was deleted or has expired") from None
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > _MAX_PIXELS:
            raise ResultGone("the result is too large to preview")
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
        image.thumbnail((max_side, max_side))
        out = io.BytesIO()
        if image.mode in ("RGBA", "LA") or "transparency" in image.info:
            image.save(out, format="PNG", optimize=True)
            return Thumbnail(out.getvalue(), "image/png")
        image.convert("RGB").save(out, format="JPEG", quality=80)
        return Thumbnail(out.getvalue(), "image/jpeg")
