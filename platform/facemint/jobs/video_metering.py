"""How a video job is metered and reported while it runs: the seconds an attempt stopped by its cancel is charged
for, and the 10 % steps its `job.progress` webhooks are told at. Pure rules; the transitions that apply them are
in jobs/service.py."""

from __future__ import annotations

import math

# `job.progress` webhooks: one when a write reaches a step of this many (10 %) that no earlier event of the job
# reached (an earlier attempt's included), the last at 90 %: the terminal event says the rest.
PROGRESS_STEPS = 10


def processed_seconds(*, frames_done: int, frames_total: int, seconds_total: float, units: int) -> int:
    """The started seconds of a (trimmed) video that a stopped attempt processed: ceil(frames_done / frames_total
    x the trimmed duration), at most `units` (the seconds held for); 0 when no frame was processed."""
    if frames_done <= 0 or frames_total <= 0:
        return 0
    seconds = min(frames_done, frames_total) / frames_total * seconds_total
    # Rounded first, so 3 of 10 frames of 10 s (3.0000000000000004 in floats) bills 3 seconds, not 4.
    return max(1, min(units, math.ceil(round(seconds, 6))))


def progress_step(frames_done: int, frames_total: int) -> int:
    """Which 10 % step `frames_done` of `frames_total` reached (0 to 9)."""
    if frames_total <= 0:
        return 0
    return min(PROGRESS_STEPS - 1, max(0, frames_done) * PROGRESS_STEPS // frames_total)
