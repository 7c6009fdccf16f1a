"""`Engine.swap_video` on demo models and clips made in code: the output keeps the frames, rate, timestamps,
duration and audio of the input (trimmed), faces take the source identity while frames without one pass through,
progress and checkpoints behave as the contract says (a cancel leaves a playable, shorter MP4), threads change
nothing, rotated phone videos come out upright, and the enhancer runs on video when asked for."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from inference.engine import Engine, EngineConfig, VideoResult
from inference.errors import EngineError, InvalidTrim, NoMatchingFace, NoTargetFace, ProcessorUnavailable
from inference.models import ENHANCER_FILE, write_demo_models
from inference.providers import ProviderChoice
from inference.video import Trim, probe_video
from tests.inference.video_helpers import Clip, Face, decode_frames, make_clip, picture

SOURCE_IDENTITY = 7
FACE: Face = (60, 40, 64, 1)
FPS = 10


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("video_models")
    write_demo_models(directory)
    return directory


@pytest.fixture(scope="module")
def engine(_block_network: None, models_dir: Path) -> Engine:
    return Engine.load(EngineConfig(models_dir=models_dir, provider=ProviderChoice.cpu))


@pytest.fixture(scope="module")
def source() -> bytes:
    return png(picture([(50, 30, 80, SOURCE_IDENTITY)], 200, 160))


def png(image: NDArray[np.uint8]) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return bytes(data)


def faces_except(no_face: range) -> Callable[[int], list[Face]]:
    """Frame i shows FACE drifting right, except the frames in `no_face`, which show none."""
    return lambda i: [] if i in no_face else [(FACE[0] + 2 * i, FACE[1], FACE[2], FACE[3])]


def region(image: NDArray[np.uint8], face: Face) -> NDArray[np.int32]:
    x, y, side, _ = face
    return image[y : y + side, x : x + side].astype(np.int32)


def difference(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def identity_of(engine: Engine, image: NDArray[np.uint8]) -> NDArray[np.float32]:
    [face] = engine._detect(image)
    engine._recognizer.get(image, face)
    return face.normed_embedding  # type: ignore[no-any-return]


def swap(engine: Engine, source: bytes, clip: Clip, output: Path, **options: Any) -> VideoResult:
    return engine.swap_video(source, clip.path, output, **options)


def stream_times(path: Path, kind: str) -> list[float]:
    with av.open(str(path)) as opened:
        stream = next(s for s in opened.streams if s.type == kind)
        return sorted(float(p.pts * p.time_base) for p in opened.demux(stream) if p.size)


# --- the output ------------------------------------------------------------------------------------------------


def test_output_keeps_frames_rate_duration_and_audio(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=20, audio="aac", faces=faces_except(range(5, 10)))
    output = tmp_path / "out.mp4"
    result = swap(engine, source, clip, output, crf=12)

    assert (result.frames_total, result.frames_done, result.frames_swapped) == (20, 20, 15)
    assert result.seconds_done == pytest.approx(2.0)
    assert (result.width, result.height, result.fps) == (192, 144, pytest.approx(10.0))
    assert result.has_audio
    assert result.audio == "copied"
    assert result.content_type == "video/mp4"
    assert result.size_bytes == output.stat().st_size
    assert result.model_set == "demo"
    assert result.providers == ["CPUExecutionProvider"]
    assert {"decode", "detect", "swap", "paste", "encode", "total"} <= set(result.timings_ms)

    probe = probe_video(output)
    assert (probe.container, probe.video_codec, probe.pixel_format) == ("mp4", "h264", "yuv420p")
    assert probe.frame_count == 20
    assert probe.fps == pytest.approx(10.0)
    assert probe.duration_seconds == pytest.approx(2.0, abs=0.1)
    assert (probe.has_audio, probe.audio_codec) == (True, "aac")
    data = output.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: playable while it downloads

    before, after = decode_frames(clip.path), decode_frames(output)
    source_identity = identity_of(engine, picture([(50, 30, 80, SOURCE_IDENTITY)], 200, 160))
    for i in (0, 12, 19):  # faces: the source identity now
        swapped = identity_of(engine, after[i])
        assert float(swapped @ source_identity) > 0.8
        assert float(swapped @ identity_of(engine, before[i])) < 0.5
    for i in range(5, 10):  # no face: passed through, within the encoder's loss
        assert difference(after[i], before[i]) < 1.5


def test_progress_is_monotone_and_ends_at_the_total(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=23)
    calls: list[tuple[int, int]] = []
    swap(engine, source, clip, tmp_path / "out.mp4", batch_frames=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 23), (8, 23), (12, 23), (16, 23), (20, 23), (23, 23)]


def test_trim(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=30, audio="aac", faces=faces_except(range(0, 30, 2)))
    output = tmp_path / "out.mp4"
    result = swap(engine, source, clip, output, trim=Trim(start=0.5, end=1.5))
    assert (result.frames_total, result.frames_done) == (10, 10)
    probe = probe_video(output)
    assert probe.frame_count == 10
    assert probe.duration_seconds == pytest.approx(1.0, abs=0.1)
    after = decode_frames(output)
    assert difference(after[1], decode_frames(clip.path)[6]) < 1.5  # frame 6 has no face: the same picture
    assert stream_times(output, "video")[0] == 0.0
    audio = stream_times(output, "audio")
    assert 0 <= audio[0] < 0.05  # cut to the trimmed range
    assert audio[-1] < 1.0


def test_a_trim_past_the_end_is_refused(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=10)
    with pytest.raises(InvalidTrim):
        swap(engine, source, clip, tmp_path / "out.mp4", trim=Trim(start=1.5, end=3.0))
    assert not (tmp_path / "out.mp4").exists()


# --- cancel ----------------------------------------------------------------------------------------------------


class Canceled(Exception):
    pass


def test_a_checkpoint_raising_mid_video_leaves_a_playable_shorter_mp4(
    engine: Engine, source: bytes, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=40, audio="aac")
    output = tmp_path / "out.mp4"
    calls: list[str] = []
    progress: list[tuple[int, int]] = []
    canceled = Canceled("the job was canceled")

    def checkpoint(stage: str) -> None:
        calls.append(stage)
        if len(calls) == 4:  # before the fourth batch
            raise canceled

    with pytest.raises(Canceled) as info:
        swap(
            engine,
            source,
            clip,
            output,
            batch_frames=4,
            checkpoint=checkpoint,
            progress=lambda d, t: progress.append((d, t)),
        )
    assert info.value is canceled
    done = progress[-1][0]
    assert 0 < done < 40
    probe = probe_video(output)
    assert probe.frame_count == done
    assert probe.duration_seconds == pytest.approx(done / FPS, abs=0.1)
    assert probe.has_audio
    assert stream_times(output, "audio")[-1] < done / FPS  # the audio stops with the video


def test_a_checkpoint_raising_before_any_frame_leaves_no_file(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=10)

    def checkpoint(stage: str) -> None:
        raise Canceled

    with pytest.raises(Canceled):
        swap(engine, source, clip, tmp_path / "out.mp4", checkpoint=checkpoint)
    assert not (tmp_path / "out.mp4").exists()


# --- threads, rotation, timestamps, containers -----------------------------------------------------------------


def test_threads_change_nothing(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=24, faces=faces_except(range(8, 12)))
    swap(engine, source, clip, tmp_path / "one.mp4", threads=1, batch_frames=5)
    swap(engine, source, clip, tmp_path / "four.mp4", threads=4, batch_frames=3)
    single, pooled = decode_frames(tmp_path / "one.mp4"), decode_frames(tmp_path / "four.mp4")
    assert len(single) == len(pooled) == 24
    assert max(difference(a, b) for a, b in zip(single, pooled, strict=True)) < 0.5


def test_a_rotated_phone_video_is_swapped_upright_and_written_upright(
    engine: Engine, source: bytes, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=10, rotation=90, audio="aac")
    output = tmp_path / "out.mp4"
    result = swap(engine, source, clip, output)
    assert result.frames_swapped == 10  # the faces were found: the frames were turned upright first
    assert (result.width, result.height) == (192, 144)
    probe = probe_video(output)
    assert (probe.width, probe.height, probe.rotation) == (192, 144, 0)
    after, before = decode_frames(output)[0], decode_frames(clip.path)[0]  # the input as a player shows it
    x, y, side, _ = FACE
    outside = np.ones(after.shape[:2], dtype=bool)
    outside[y - 10 : y + side + 10, x - 10 : x + side + 10] = False
    assert float(np.abs(after[outside].astype(int) - before[outside]).mean()) < 1  # upright, as shown


def test_a_variable_frame_rate_keeps_its_timestamps(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=16, frame_seconds=lambda i: 0.05 if i % 2 else 0.15)
    output = tmp_path / "out.mp4"
    swap(engine, source, clip, output)
    assert stream_times(output, "video") == pytest.approx(clip.pts_seconds, abs=0.002)
    probe = probe_video(output)
    assert probe.variable_frame_rate
    assert probe.frame_count == 16


@pytest.mark.parametrize(
    ("name", "container", "codec", "audio", "outcome", "audio_codec"),
    [
        ("in.webm", "webm", "libvpx-vp9", "libopus", "copied", "opus"),
        ("in.mkv", "matroska", "libx264", "libopus", "copied", "opus"),
        ("in.mov", "mov", "libx264", "pcm_s16le", "transcoded", "aac"),
    ],
)
def test_other_containers_and_audio_codecs(
    engine: Engine,
    source: bytes,
    tmp_path: Path,
    name: str,
    container: str,
    codec: str,
    audio: str,
    outcome: str,
    audio_codec: str,
) -> None:
    clip = make_clip(tmp_path / name, container=container, codec=codec, audio=audio, frames=10)
    output = tmp_path / "out.mp4"
    result = swap(engine, source, clip, output)
    assert (result.frames_done, result.frames_swapped, result.audio) == (10, 10, outcome)
    probe = probe_video(output)
    assert (probe.container, probe.video_codec, probe.audio_codec) == ("mp4", "h264", audio_codec)
    assert probe.duration_seconds == pytest.approx(1.0, abs=0.1)


def test_no_audio(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=10)
    result = swap(engine, source, clip, tmp_path / "out.mp4")
    assert (result.has_audio, result.audio) == (False, "none")
    assert not probe_video(tmp_path / "out.mp4").has_audio


# --- faces and processors --------------------------------------------------------------------------------------


def test_a_video_without_any_face_is_refused_and_leaves_no_file(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=10, faces=lambda i: [])
    with pytest.raises(NoTargetFace):
        swap(engine, source, clip, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_reference_mode_swaps_the_face_like_the_reference_in_each_frame(
    engine: Engine, source: bytes, tmp_path: Path
) -> None:
    left, right = (20, 40, 56, 2), (110, 40, 56, 3)
    clip = make_clip(tmp_path / "in.mp4", frames=10, faces=lambda i: [left, right] if i < 6 else [left])
    reference = png(picture([(40, 40, 80, 3)], 200, 160))
    output = tmp_path / "out.mp4"
    result = swap(engine, source, clip, output, faces="reference", reference=reference, crf=12)
    assert result.frames_swapped == 6  # frames 6-9 have no face like the reference: unchanged
    before, after = decode_frames(clip.path), decode_frames(output)
    assert difference(region(after[0], right), region(before[0], right)) > 20
    assert difference(region(after[0], left), region(before[0], left)) < 3  # the encoder's loss on sharp tiles
    assert difference(after[8], before[8]) < 1.5
    with pytest.raises(NoMatchingFace):
        swap(engine, source, clip, output, faces="reference", reference=png(picture([(40, 40, 80, 9)], 200, 160)))


def test_the_enhancer_runs_on_video_when_asked_for(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=6)
    plain = swap(engine, source, clip, tmp_path / "plain.mp4", crf=12)
    enhanced = swap(engine, source, clip, tmp_path / "enhanced.mp4", crf=12, processors="face_swapper,face_enhancer")
    assert plain.processors == ("face_swapper",)
    assert enhanced.processors == ("face_swapper", "face_enhancer")
    assert "enhance" in enhanced.timings_ms
    assert "enhance" not in plain.timings_ms
    a, b = decode_frames(tmp_path / "plain.mp4")[3], decode_frames(tmp_path / "enhanced.mp4")[3]
    face = (FACE[0] + 6, FACE[1], FACE[2], FACE[3])
    assert difference(region(a, face), region(b, face)) > 5  # the demo enhancer's contrast and warm tint
    x, y, side, _ = face
    assert difference(a[:, x + side + 20 :], b[:, x + side + 20 :]) < 0.5  # and nothing away from the face


def test_the_enhancer_needs_its_model(models_dir: Path, source: bytes, tmp_path: Path) -> None:
    bare = tmp_path / "models"
    shutil.copytree(models_dir, bare)
    (bare / ENHANCER_FILE).unlink()
    engine = Engine.load(EngineConfig(models_dir=bare, provider=ProviderChoice.cpu))
    assert engine.processors == ("face_swapper",)
    clip = make_clip(tmp_path / "in.mp4", frames=3)
    with pytest.raises(ProcessorUnavailable) as info:
        swap(engine, source, clip, tmp_path / "out.mp4", processors=["face_swapper", "face_enhancer"])
    assert info.value.status_code == 503
    assert not info.value.input_error


# --- failures --------------------------------------------------------------------------------------------------


def test_a_failing_progress_callback_stops_the_run_with_its_own_error(
    engine: Engine, source: bytes, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=20)

    def progress(done: int, total: int) -> None:
        raise ConnectionError("the progress store is gone")

    with pytest.raises(ConnectionError):  # not an input error: the caller retries
        swap(engine, source, clip, tmp_path / "out.mp4", batch_frames=4, progress=progress)
    assert not (tmp_path / "out.mp4").exists()


def test_a_failing_frame_stops_the_run_with_its_own_error(
    engine: Engine, source: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=20)
    real = engine._swapper.get
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("the GPU fell off the bus")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine._swapper, "get", flaky)
    with pytest.raises(RuntimeError, match="fell off"):
        swap(engine, source, clip, tmp_path / "out.mp4", batch_frames=4)
    assert not (tmp_path / "out.mp4").exists()


def test_an_unwritable_output_is_not_the_inputs_fault(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=5)
    with pytest.raises(EngineError) as info:
        swap(engine, source, clip, tmp_path / "missing-directory" / "out.mp4")
    assert not info.value.input_error


def test_an_odd_frame_size_loses_its_last_row_and_column(engine: Engine, source: bytes, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.webm", container="webm", codec="libvpx-vp9", size=(193, 145), frames=5)
    result = swap(engine, source, clip, tmp_path / "out.mp4")
    assert (result.width, result.height, result.frames_swapped) == (192, 144, 5)
    assert (probe_video(tmp_path / "out.mp4").width, probe_video(tmp_path / "out.mp4").height) == (192, 144)


def test_pipeline_threads_run_in_a_copy_of_the_callers_context() -> None:
    """What the caller keeps in context variables (the worker's log fields: a job's ids) reaches the decoder's and
    encoder's lines; a plain thread would start with an empty context."""
    import contextvars

    from inference.video_pipeline import _Thread

    probe: contextvars.ContextVar[str | None] = contextvars.ContextVar("probe", default=None)
    probe.set("job-7")
    seen: list[str | None] = []
    thread = _Thread("probe", lambda: seen.append(probe.get()))
    thread.start()
    thread.join()
    assert seen == ["job-7"]
    assert thread.error is None
