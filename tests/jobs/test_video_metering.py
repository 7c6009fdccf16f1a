"""The rules a video job is metered by: the started seconds a canceled attempt is charged for, and the 10 % steps
of its progress webhooks."""

from __future__ import annotations

import pytest

from facemint.jobs.video_metering import processed_seconds, progress_step


@pytest.mark.parametrize(
    ("frames_done", "frames_total", "seconds_total", "units", "charged"),
    [
        (0, 60, 6.0, 6, 0),  # nothing processed: nothing charged
        (1, 300, 10.0, 10, 1),  # a started second is a second
        (3, 10, 10.0, 10, 3),  # 3.0000000000000004 in floats: still 3
        (16, 60, 6.0, 6, 2),  # 1.6 s -> 2
        (24, 60, 6.0, 6, 3),  # 2.4 s -> 3
        (60, 60, 6.0, 6, 6),  # all of it
        (11, 22, 1.1, 2, 1),  # half of a 1.1 s trim: 0.55 s -> 1
        (22, 22, 1.1, 2, 2),  # all of a 1.1 s trim: 2 started seconds, the units held
        (70, 60, 6.0, 6, 6),  # never more than the units held
    ],
)
def test_a_canceled_attempt_is_charged_the_started_seconds_it_processed(
    frames_done: int, frames_total: int, seconds_total: float, units: int, charged: int
) -> None:
    assert (
        processed_seconds(frames_done=frames_done, frames_total=frames_total, seconds_total=seconds_total, units=units)
        == charged
    )


def test_progress_steps_are_tenths_up_to_ninety_percent() -> None:
    assert [progress_step(done, 40) for done in (0, 3, 4, 20, 39, 40)] == [0, 0, 1, 5, 9, 9]
    assert progress_step(5, 0) == 0
