"""The video colour conversions: what they write is what FFmpeg (and so a player) reads back, with no drift over
repeated passes, for BT.601 and BT.709 frames; other layouts go through swscale."""

from __future__ import annotations

import av
import numpy as np
import pytest
from av.video.reformatter import Interpolation
from numpy.typing import NDArray

from inference.video_color import bgr_to_frame, frame_to_bgr, supported_colorspace
from tests.inference.video_helpers import picture

BT709, SMPTE170M = 1, 6
ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def bias(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> tuple[float, float]:
    """Mean absolute and largest mean signed per-channel difference."""
    delta = a.astype(np.int32) - b.astype(np.int32)
    return float(np.abs(delta).mean()), float(np.abs(delta.reshape(-1, 3).mean(axis=0)).max())


@pytest.mark.parametrize("colorspace", [SMPTE170M, BT709])
def test_ffmpeg_reads_back_what_was_written(colorspace: int) -> None:
    image = picture([(60, 40, 64, 1), (130, 30, 40, 2)])
    frame = bgr_to_frame(image, colorspace)
    assert (frame.format.name, frame.width, frame.height, frame.colorspace) == ("yuv420p", 192, 144, colorspace)
    read = frame.to_ndarray(format="bgr24", interpolation=ACCURATE)
    mean, drift = bias(read, image)
    assert mean < 1.0  # the 4:2:0 chroma's loss on the faces' coloured tiles
    assert drift < 0.2


@pytest.mark.parametrize("colorspace", [SMPTE170M, BT709])
def test_repeated_passes_do_not_drift(colorspace: int) -> None:
    image = picture([(60, 40, 64, 1)])
    once = frame_to_bgr(bgr_to_frame(image, colorspace))
    current = once
    for _ in range(4):
        current = frame_to_bgr(bgr_to_frame(current, colorspace))
    assert bias(current, image)[1] < 0.3
    assert bias(current, once)[0] < 1.0  # the chroma edges soften a little; the colours stay


def test_untagged_frames_are_bt601_as_ffmpeg_assumes() -> None:
    assert supported_colorspace(2) == SMPTE170M
    assert supported_colorspace(None) == SMPTE170M
    assert supported_colorspace(BT709) == BT709


def test_other_layouts_go_through_swscale() -> None:
    image = picture([(60, 40, 64, 1)])
    full_range = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuvj444p")
    back = frame_to_bgr(full_range)
    assert back.flags.writeable
    assert bias(back, image)[0] < 1.5


def test_odd_sizes_are_refused_for_yuv420p() -> None:
    with pytest.raises(ValueError, match="even"):
        bgr_to_frame(np.zeros((11, 10, 3), np.uint8), BT709)
