"""The output video's audio: the input's first audio stream, for the trimmed range, muxed as the video advances.

AAC, MP3, Opus and ALAC packets are copied as they are (MP4 carries them); any other codec (PCM from a camera's
MOV, Vorbis from a WebM, ...) is decoded and encoded to AAC. When neither works the video is written without
audio and the track says why (`state` "dropped", `note`). Packets are pulled from their own demuxer only up to
the video's time (`mux_until`), so the muxer never buffers more than a packet ahead and a partial video gets
exactly the audio of its frames."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

from inference.video import open_video

__all__ = ["AUDIO_COPY_CODECS", "AudioTrack", "AudioWindow"]

logger = logging.getLogger("inference.video")

AUDIO_COPY_CODECS: Final = frozenset({"aac", "mp3", "opus", "alac"})


@dataclass(frozen=True)
class AudioWindow:
    """The input times (seconds) of the video's first output frame, which becomes 0, and of the trim's end;
    `trimmed`: the start is trimmed, so audio before the first frame is left out."""

    first_seconds: float
    end_seconds: float
    trimmed: bool


def _ticks(seconds: float, time_base: Fraction) -> int:
    return round(seconds / float(time_base))


class AudioTrack:
    """Use `AudioTrack.open(...)` after the video stream is added to `output` and before its header is written.
    `state`: "copied", "transcoded", "dropped" or "none" (the input has no audio); `note` says what went wrong."""

    def __init__(self) -> None:
        self.state = "none"
        self.note: str | None = None
        self._input: Any = None
        self._output: Any = None
        self._packets: Iterator[tuple[float, Any]] = iter(())
        self._pending: tuple[float, Any] | None = None

    @classmethod
    def open(
        cls,
        target: Path,
        container: str,
        *,
        output: Any,
        has_audio: bool,
        max_pixels: int,
        window: Callable[[], AudioWindow],
    ) -> AudioTrack:
        """Add the audio stream to `output`; `window()` is asked for the cut when the first packet is needed."""
        track = cls()
        if not has_audio:
            return track
        try:
            track._input = open_video(target, container, max_pixels=max_pixels)
            source = next(iter(track._input.streams.audio))
            codec = source.codec_context.name if source.codec_context is not None else None
            if codec in AUDIO_COPY_CODECS:
                try:
                    out = output.add_stream_from_template(source)
                    track._packets, track.state = track._copied(source, out, window), "copied"
                except Exception as exc:  # the muxer refused the codec's parameters: transcode instead
                    logger.info("copying the %s audio failed (%s); transcoding to AAC", codec, exc)
            if track.state == "none":
                out = output.add_stream("aac", rate=source.codec_context.sample_rate or 48000)
                layout = source.codec_context.layout
                out.layout = layout if layout is not None and layout.nb_channels <= 2 else "stereo"
                track._packets, track.state = track._transcoded(source, out, window), "transcoded"
        except Exception as exc:
            track.close()
            track.state, track.note = "dropped", f"the audio could not be copied or transcoded: {exc}"[:300]
            logger.warning("writing the video without its audio: %s", exc)
            return track
        track._output = output
        return track

    def _cut(self, source: Any, window: AudioWindow) -> tuple[int, int]:
        """The window in the audio's time base (offset, end); seeks to the start when it is trimmed."""
        if window.trimmed:
            self._input.seek(_ticks(window.first_seconds, source.time_base), stream=source, backward=True)
        return _ticks(window.first_seconds, source.time_base), _ticks(window.end_seconds, source.time_base)

    def _copied(self, source: Any, out: Any, window: Callable[[], AudioWindow]) -> Iterator[tuple[float, Any]]:
        cut = window()
        offset, end = self._cut(source, cut)
        for packet in self._input.demux(source):
            if not packet.size or packet.pts is None:
                continue
            if cut.trimmed and packet.pts < offset:
                continue  # the packet straddling the trim's start is left out: at most one packet of silence
            if packet.pts >= end:
                return
            packet.pts -= offset
            if packet.dts is not None:
                packet.dts -= offset
            packet.stream = out
            yield float(packet.pts * source.time_base), packet

    def _transcoded(self, source: Any, out: Any, window: Callable[[], AudioWindow]) -> Iterator[tuple[float, Any]]:
        cut = window()
        offset, end = self._cut(source, cut)
        rate = Fraction(1, out.codec_context.sample_rate)
        written = None
        for frame in self._input.decode(source):
            if frame.pts is None or (cut.trimmed and frame.pts < offset):
                continue
            if frame.pts >= end:
                break
            if written is None:
                written = _ticks(float((frame.pts - offset) * source.time_base), rate)
            frame.pts, frame.time_base = written, rate
            written += frame.samples
            for packet in out.encode(frame):
                yield float(packet.pts * packet.time_base), packet
        for packet in out.encode(None):
            yield float(packet.pts * packet.time_base), packet

    def mux_until(self, seconds: float, *, final: bool) -> None:
        """Mux the audio packets that start before `seconds` of the output's time; `final`: the video ends there."""
        if self._output is None:
            return
        try:
            while True:
                if self._pending is None:
                    self._pending = next(self._packets, None)
                    if self._pending is None:
                        return
                at, packet = self._pending
                if at >= seconds:
                    return
                self._output.mux(packet)
                self._pending = None
        except Exception as exc:  # a corrupt audio packet: the rest of the audio is left out, the video is not
            self.note = f"the audio stops early: {exc}"[:300]
            logger.warning("the audio stops early: %s", exc)
            self.close()
        finally:
            if final:
                self.close()

    def close(self) -> None:
        """Stop reading the input's audio (what was muxed stays)."""
        self._output = None
        self._pending = None
        self._packets = iter(())
        if self._input is not None:
            try:
                self._input.close()
            finally:
                self._input = None
