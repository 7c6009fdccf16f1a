"""The streaming video pipeline: decode -> per-frame work on a thread pool, in batches -> encode in order, with the
original audio; bounded memory whatever the clip's length, and never a frame on disk.

Threads and queues (each queue holds at most one batch, so memory is flat in the clip's length):

    decoder thread      demux + decode (FFmpeg's own threads)                        -> queue (1 batch)
    caller's thread     checkpoint, then the batch's frames to the pool; keeps at most two batches in flight,
                        hands finished batches to the encoder in order and reports progress after each
    pool (`threads`)    per frame: to upright BGR, the work (detect, choose, swap, paste, enhance) in place,
                        then to yuv420p
    encoder thread      libx264 (its own threads), mux; the audio interleaved by time <- queue (1 batch)

The decoder and the encoder are the serial stages, so they do nothing else: both colour conversions (some 10 ms
each per 1080p frame) run on the pool. Moving them there took the 1080p demo-model pipeline from 1.25x to 1.53x
the throughput of a plain frame loop on 2 vCPUs (`bench/video.py`, 10 s clip; docs/benchmarks.md Part 6).

At most six batches of frames exist at once (being decoded, decoded, two in flight, queued, being encoded): 8
frames of 1080p BGR are 50 MB, so at most 300 MB for a 1080p video of any length at the default batch.

Output: H.264 (libx264, preset `veryfast`, CRF), yuv420p, in MP4 with `+faststart`. `veryfast` is FaceFusion's
default and x264's usual throughput choice: the encoder shares the CPU with detection and paste-back, and on a
640x360 test clip at CRF 20 `medium` took twice its encode time (4.1 vs 2.0 ms a frame) for no smaller file.
Frames are turned upright before detection (faces are only found upright) and written upright, with no rotation
metadata: every player shows them as the original was shown. Each output frame keeps its input timestamp
(shifted to start at 0), so a variable frame rate stays as it was; the stream's average rate is the encoder's
rate. Odd frame sizes lose their last column or row (yuv420p needs even sizes).

Audio (`inference.video_audio`): the first audio stream, for the trimmed range, copied when MP4 carries its codec
(AAC, MP3, Opus, ALAC), else transcoded to AAC, else left out (and the result says so); it never runs past the
last video frame, also in a partial file. Colours: `inference.video_color`."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from inference.errors import EngineError, InvalidTrim, InvalidVideo
from inference.video import Trim, VideoProbe, open_video, video_stream
from inference.video_audio import AudioTrack, AudioWindow
from inference.video_color import bgr_to_frame, frame_to_bgr, supported_colorspace

logger = logging.getLogger("inference.video")

__all__ = ["ENCODER_PRESET", "FrameReport", "PipelineOutcome", "run_pipeline"]

ENCODER_PRESET: Final = "veryfast"
_QUEUE_BATCHES: Final = 1
_IN_FLIGHT_BATCHES: Final = 2
_POLL_SECONDS: Final = 0.1
# Frames decoded past the packets' count before the decoder stops anyway (a decoder never makes many more frames
# than packets; a stream that does is not decoded further than its packets promised).
_FRAME_SLACK: Final = 16
_ROTATE: Final = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}

Frame = NDArray[np.uint8]


@dataclass
class FrameReport:
    """What the work did to one frame: faces found and changed, and its stage times in ms."""

    faces_detected: int = 0
    faces_swapped: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


FrameWork = Callable[[Frame], FrameReport]


@dataclass
class PipelineOutcome:
    frames_total: int
    frames_done: int
    frames_swapped: int  # frames where at least one face was swapped; the others pass through unchanged
    faces_swapped: int
    seconds_done: float
    width: int
    height: int
    fps: float
    audio: str  # "copied", "transcoded", "dropped" (with audio_note) or "none" (the input had none)
    audio_note: str | None
    size_bytes: int
    timings_ms: dict[str, float]


@dataclass
class _Decoded:
    """One frame on its way through: the decoder's frame, then the encoder's yuv420p frame; the pool makes both
    conversions, with the BGR pixels the work changes in place in between (each released as it goes)."""

    pts: int  # in the input stream's time base, from the first frame of the trimmed range
    decoded: Any  # the decoder's frame, until the pool converts it
    encoded: Any = None


class _Stop(Exception):
    """Raised inside a pipeline thread that was told to stop."""


class _Interrupted(Exception):
    """Carries what the caller's checkpoint raised out of the batch loop."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _End:
    """Marks the end of a queue's items."""


_END: Final = _End()


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event, consumer: threading.Thread | None = None) -> None:
    """Put, waking up to give up (`_Stop`) when `stop` is set or the `consumer` thread has ended."""
    while True:
        if stop.is_set() or (consumer is not None and not consumer.is_alive()):
            raise _Stop
        try:
            q.put(item, timeout=_POLL_SECONDS)
            return
        except queue.Full:
            continue


class _Thread(threading.Thread):
    """A pipeline thread that keeps its exception for the caller, and runs in a copy of the caller's context (a
    thread starts with an empty one): whatever the caller's logging keeps in context variables (a job's ids) is on
    this thread's lines too."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._body = target
        self._context = contextvars.copy_context()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._context.run(self._body)
        except _Stop:
            pass
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            self.error = exc


# --- the run ---------------------------------------------------------------------------------------------------


def run_pipeline(
    target: Path,
    output: Path,
    *,
    probe: VideoProbe,
    trim: Trim,
    work: FrameWork,
    crf: int,
    batch_frames: int,
    threads: int,
    max_pixels: int,
    progress: Callable[[int, int], None] | None,
    checkpoint: Callable[[str], None] | None,
) -> PipelineOutcome:
    """Process the frames of `target` in `trim` with `work` and write the MP4 `output` (see the module's
    docstring). If `checkpoint` raises, the frames already handed to the encoder are finalised into a playable,
    shorter `output` (no file when there are none) and the exception is re-raised; any other failure leaves no
    `output`."""
    started = time.perf_counter()
    container = probe.container
    frames_total = _count_frames(target, container, trim, max_pixels)
    run = _Run(target=target, output=output, probe=probe, trim=trim, crf=crf, max_pixels=max_pixels)
    run.max_frames = frames_total + _FRAME_SLACK
    try:
        run.start(batch_frames)
        stats = _process(run, work, threads, frames_total, progress, checkpoint)
        run.finish()
    except _Interrupted as interrupted:
        run.abort(keep=True)
        raise interrupted.original from None
    except BaseException:
        run.abort(keep=False)
        raise
    frames_done = run.frames_encoded
    if frames_done != frames_total and progress is not None:
        progress(frames_done, frames_done)  # the decoder found fewer (or more) frames than the packets promised
    timings = {
        **stats.timings,
        "decode": run.decode_ms + stats.timings.get("decode", 0.0),
        "encode": run.encode_ms + stats.timings.get("encode", 0.0),
    }
    timings["total"] = (time.perf_counter() - started) * 1000
    return PipelineOutcome(
        frames_total=frames_done if frames_done != frames_total else frames_total,
        frames_done=frames_done,
        frames_swapped=stats.frames_swapped,
        faces_swapped=stats.faces_swapped,
        seconds_done=run.seconds_encoded,
        width=run.width,
        height=run.height,
        fps=probe.fps,
        audio=run.audio.state if run.audio is not None else "none",
        audio_note=run.audio.note if run.audio is not None else None,
        size_bytes=output.stat().st_size,
        timings_ms={k: round(v, 3) for k, v in timings.items()},
    )


@dataclass
class _Stats:
    frames_swapped: int = 0
    faces_swapped: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, report: FrameReport) -> None:
        self.frames_swapped += 1 if report.faces_swapped else 0
        self.faces_swapped += report.faces_swapped
        for stage, ms in report.timings_ms.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + ms


def _process(
    run: _Run,
    work: FrameWork,
    threads: int,
    frames_total: int,
    progress: Callable[[int, int], None] | None,
    checkpoint: Callable[[str], None] | None,
) -> _Stats:
    stats = _Stats()
    in_flight: deque[tuple[list[_Decoded], list[Future[FrameReport]]]] = deque()
    done = 0

    def hand_over_oldest() -> None:
        nonlocal done
        batch, futures = in_flight.popleft()
        for future in futures:
            stats.add(future.result())
        run.encode(batch)
        done += len(batch)
        if progress is not None:
            progress(done, frames_total)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="video-work") as pool:
        try:
            for batch in run.decoded_batches():
                if checkpoint is not None:
                    try:
                        checkpoint("batch")
                    except BaseException as exc:
                        raise _Interrupted(exc) from exc
                in_flight.append((batch, [pool.submit(run.work_and_convert, work, item) for item in batch]))
                if len(in_flight) >= _IN_FLIGHT_BATCHES:
                    hand_over_oldest()
            while in_flight:
                hand_over_oldest()
        finally:
            for _, futures in in_flight:  # batches never handed over: not in the output, not reported
                for future in futures:
                    future.cancel()
    return stats


# --- decoding, encoding, audio ---------------------------------------------------------------------------------


def _count_frames(target: Path, container: str, trim: Trim, max_pixels: int) -> int:
    """The frames whose timestamps fall in the trim, from the packets (demuxed, not decoded)."""
    import av

    with open_video(target, container, max_pixels=max_pixels) as opened:
        stream = video_stream(opened)
        origin, time_base = _origin(stream), stream.time_base or Fraction(1, 1000)
        count = 0
        try:
            for packet in opened.demux(stream):
                if packet.size and packet.pts is not None and not packet.is_discard:
                    seconds = float((packet.pts - origin) * time_base)
                    count += 1 if trim.start - 1e-6 <= seconds < trim.end - 1e-6 else 0
        except av.FFmpegError as exc:
            raise InvalidVideo("The video is corrupt or truncated.", reason=str(exc)[:300]) from exc
    if count == 0:
        raise InvalidTrim(f"No frame of the video lies between {trim.start:g} s and {trim.end:g} s.")
    return count


def _origin(stream: Any) -> int:
    return int(stream.start_time) if stream.start_time is not None else 0


class _Run:
    """One pipeline run's containers, threads and counters."""

    def __init__(self, *, target: Path, output: Path, probe: VideoProbe, trim: Trim, crf: int, max_pixels: int) -> None:
        self.target, self.output, self.probe, self.trim, self.crf = target, output, probe, trim, crf
        self.max_pixels = max_pixels
        self.stop = threading.Event()
        self.decoded: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self.to_encode: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_BATCHES)
        upright = probe.rotation in (90, 270)
        self.width = (probe.height if upright else probe.width) // 2 * 2
        self.height = (probe.width if upright else probe.height) // 2 * 2
        self.max_frames = probe.frame_count + _FRAME_SLACK
        self.decode_ms = 0.0
        self.encode_ms = 0.0
        self.frames_encoded = 0
        self.seconds_encoded = 0.0
        self.audio: AudioTrack | None = None
        self.first_pts: int | None = None  # the first output frame's input timestamp, once decoded
        self.origin_seconds = 0.0  # the input time of the video's first frame, where trims count from
        self._input: Any = None
        self._output: Any = None
        self._decoder: _Thread | None = None
        self._encoder: _Thread | None = None

    # The decoder side.

    def start(self, batch_frames: int) -> None:
        import av

        if self.width < 2 or self.height < 2:
            raise InvalidVideo("The video's frames are too small to encode.", width=self.width, height=self.height)
        self._input = open_video(self.target, self.probe.container, max_pixels=self.max_pixels)
        stream = video_stream(self._input)
        stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads
        stream.codec_context.options = {"max_pixels": str(self.max_pixels)}  # also for a size change mid-stream
        try:
            self._output = av.open(str(self.output), mode="w", format="mp4", options={"movflags": "+faststart"})
        except av.FFmpegError as exc:
            raise EngineError(f"Could not create the output video: {exc}") from exc
        self._video_out = self._add_video_stream(stream)
        self.audio = AudioTrack.open(
            self.target,
            self.probe.container,
            output=self._output,
            has_audio=self.probe.has_audio,
            max_pixels=self.max_pixels,
            window=self._audio_window,
        )
        self._decoder = _Thread("video-decode", lambda: self._decode(stream, batch_frames))
        self._encoder = _Thread("video-encode", self._encode_loop)
        self._decoder.start()
        self._encoder.start()

    def _add_video_stream(self, source: Any) -> Any:
        rate = source.average_rate or Fraction(round(self.probe.fps * 1000), 1000)
        out = self._output.add_stream("libx264", rate=rate, options={"crf": str(self.crf), "preset": ENCODER_PRESET})
        out.width, out.height, out.pix_fmt = self.width, self.height, "yuv420p"
        # The input's own time base: every frame keeps its timestamp, whatever the rate (VFR included).
        self.time_base = source.time_base or Fraction(1, 90000)
        out.codec_context.time_base = self.time_base
        out.time_base = self.time_base
        context = source.codec_context
        # The input's colour matrix both ways (inference.video_color), its primaries and transfer tags kept.
        self.colorspace = supported_colorspace(getattr(context, "colorspace", None))
        out.codec_context.colorspace = self.colorspace
        out.codec_context.color_range = 1  # MPEG (limited), as encoded
        for name in ("color_primaries", "color_trc"):
            value = getattr(context, name, None)
            if value:
                setattr(out.codec_context, name, value)
        self.frame_seconds = 1.0 / self.probe.fps if self.probe.fps > 0 else 0.0
        return out

    def _decode(self, stream: Any, batch_frames: int) -> None:
        import av

        try:
            self._decode_frames(stream, batch_frames)
        except av.FFmpegError as exc:  # the input's data: corrupt, truncated, undecodable
            raise InvalidVideo("The video could not be decoded: it is corrupt or truncated.", reason=str(exc)) from exc

    def _decode_frames(self, stream: Any, batch_frames: int) -> None:
        origin, time_base = _origin(stream), self.time_base
        self.origin_seconds = float(origin * time_base)
        start = _ticks(self.trim.start, time_base) + origin
        end = _ticks(self.trim.end, time_base) + origin
        margin = max(1, _ticks(1e-6, time_base))
        if self.trim.start > 0:
            self._input.seek(start, stream=stream, backward=True, any_frame=False)
        first: int | None = None
        batch: list[_Decoded] = []
        expected = (self.probe.width, self.probe.height)
        decoded = 0
        clock = time.perf_counter()
        for frame in self._input.decode(stream):
            if self.stop.is_set():
                raise _Stop
            pts = frame.pts
            if pts is None or pts < start - margin:
                continue
            if pts >= end - margin:
                break
            decoded += 1
            if decoded > self.max_frames:
                logger.warning("the decoder made more frames than the video has packets; stopping at %d", decoded)
                break
            if (frame.width, frame.height) != expected:
                raise InvalidVideo(
                    f"The frame size changes mid-video ({expected[0]}x{expected[1]} to {frame.width}x{frame.height}).",
                )
            if first is None:
                first = self.first_pts = pts
            batch.append(_Decoded(pts=pts - first, decoded=frame))
            if len(batch) == batch_frames:
                self.decode_ms += (time.perf_counter() - clock) * 1000
                _put(self.decoded, batch, self.stop)
                clock = time.perf_counter()
                batch = []
        self.decode_ms += (time.perf_counter() - clock) * 1000
        if batch:
            _put(self.decoded, batch, self.stop)
        _put(self.decoded, _END, self.stop)

    def decoded_batches(self) -> Iterator[list[_Decoded]]:
        """The decoded batches, in order; re-raises the decoder's error; stops early if the encoder failed."""
        assert self._decoder is not None
        while True:
            try:
                item = self.decoded.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                self._raise_thread_errors()
                if not self._decoder.is_alive() and self.decoded.empty():
                    self._raise_thread_errors()
                    raise EngineError("The video decoder stopped without finishing.") from None
                continue
            if item is _END:
                return
            self._raise_thread_errors()
            yield item

    def _raise_thread_errors(self) -> None:
        """Re-raise, in the caller's thread, what ended the decoder or the encoder: InvalidVideo for the input's
        data, an EngineError (not the input's fault) for the encoder, or whatever else happened (disk full)."""
        for thread in (self._decoder, self._encoder):
            if thread is not None and thread.error is not None:
                raise thread.error

    # The pool's side.

    def work_and_convert(self, work: FrameWork, item: _Decoded) -> FrameReport:
        """One frame on the pool: the decoded frame to upright BGR, the work, then the encoder's yuv420p. The
        conversions run here, not in the decoder's and encoder's threads: those are the pipeline's serial stages
        (the encoder is x264, which threads itself), so they are left the decoding and the encoding alone."""
        clock = time.perf_counter()
        pixels = frame_to_bgr(item.decoded)
        item.decoded = None
        rotate = _ROTATE.get(self.probe.rotation)
        if rotate is not None:
            pixels = cast(Frame, cv2.rotate(pixels, rotate))
        if pixels.shape[:2] != (self.height, self.width):  # an odd size: the last row or column goes
            pixels = np.ascontiguousarray(pixels[: self.height, : self.width])
        converted_in = (time.perf_counter() - clock) * 1000
        report = work(pixels)
        clock = time.perf_counter()
        item.encoded = bgr_to_frame(pixels, self.colorspace)
        converted_out = (time.perf_counter() - clock) * 1000
        for stage, ms in (("decode", converted_in), ("encode", converted_out)):
            report.timings_ms[stage] = report.timings_ms.get(stage, 0.0) + ms
        return report

    # The encoder side.

    def encode(self, batch: list[_Decoded]) -> None:
        """Hand a processed batch to the encoder thread (blocks while the encoder is a batch behind)."""
        self._raise_thread_errors()
        try:
            _put(self.to_encode, batch, self.stop, consumer=self._encoder)
        except _Stop:
            self._raise_thread_errors()
            raise EngineError("The video encoder stopped without finishing.") from None

    def _encode_loop(self) -> None:
        import av

        try:
            self._encode_batches()
        except av.FFmpegError as exc:  # the encoder or the muxer (not the input's fault)
            raise EngineError(f"The output video could not be encoded: {exc}") from exc

    def _encode_batches(self) -> None:
        last_pts = -1
        while True:
            try:
                item = self.to_encode.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self.stop.is_set():
                    raise _Stop from None
                continue
            if item is _END:
                break
            clock = time.perf_counter()
            for decoded in item:
                frame = decoded.encoded
                decoded.encoded = None
                pts = max(decoded.pts, last_pts + 1)  # strictly increasing, as the encoder requires
                frame.pts, frame.time_base = pts, self.time_base
                last_pts = pts
                self._mux_video(self._video_out.encode(frame))
                self.frames_encoded += 1
                self.seconds_encoded = float(pts * self.time_base) + self.frame_seconds
            self.encode_ms += (time.perf_counter() - clock) * 1000
        clock = time.perf_counter()
        self._mux_video(self._video_out.encode(None))
        assert self.audio is not None
        if self.frames_encoded:
            self.audio.mux_until(self.seconds_encoded, final=True)
        self.audio.close()
        self.encode_ms += (time.perf_counter() - clock) * 1000

    def _audio_window(self) -> AudioWindow:
        """Where the audio is cut: known once the first frame is decoded (the audio is muxed after it)."""
        assert self.first_pts is not None
        return AudioWindow(
            first_seconds=float(self.first_pts * self.time_base),
            end_seconds=self.origin_seconds + self.trim.end,
            trimmed=self.trim.start > 0,
        )

    def _mux_video(self, packets: list[Any]) -> None:
        for packet in packets:
            if packet.dts is not None and self.audio is not None:
                self.audio.mux_until(float(packet.dts * packet.time_base), final=False)
            self._output.mux(packet)

    # Ending.

    def finish(self) -> None:
        """Every frame handed over is encoded: flush, close, join (an encoder's error is raised)."""
        self._end_encoding()
        self._raise_thread_errors()
        self.stop.set()
        if self._decoder is not None:
            self._decoder.join()
        self._close(keep=True)

    def abort(self, *, keep: bool) -> None:
        """Stop the decoder; when `keep`, finish encoding what was handed over and close a playable file (none
        when no frame was encoded); else delete it."""
        if keep:
            self._end_encoding()
        keep = keep and self.frames_encoded > 0 and (self._encoder is None or self._encoder.error is None)
        self.stop.set()
        for thread in (self._decoder, self._encoder):
            if thread is not None:
                thread.join()
        self._close(keep=keep)

    def _end_encoding(self) -> None:
        """Tell the encoder thread that no more batches come, and wait for it to flush."""
        if self._encoder is None:
            return
        with contextlib.suppress(_Stop):  # it has already ended (its error, if any, is kept)
            _put(self.to_encode, _END, self.stop, consumer=self._encoder)
        self._encoder.join()

    def _close(self, *, keep: bool) -> None:
        for name in ("_output", "_input"):
            opened = getattr(self, name)
            if opened is None:
                continue
            try:
                opened.close()
            except Exception as exc:  # a failed flush of the muxer: the file is not playable
                if name == "_output" and keep:
                    logger.warning("closing the output video failed: %s", exc)
                    keep = False
            setattr(self, name, None)
        if self.audio is not None:
            self.audio.close()
        if not keep:
            self.output.unlink(missing_ok=True)


def _ticks(seconds: float, time_base: Fraction) -> int:
    return round(seconds / float(time_base))
