"""Untrusted video uploads: recognised by content, opened safely, probed within limits before anything is decoded.

`probe_video(path, limits=...)` checks, in this order, stopping at the first refusal (each its own error):

1. the byte limit (`VideoTooLarge`), an empty file (`InvalidVideo`);
2. the container from the content, never the file name (`detect_video_container`): ISO BMFF (MP4, MOV, 3GP)
   or Matroska (MKV, WebM). Anything else is an `UnsupportedVideoFormat`: an HLS playlist (whatever its file
   name), an ffconcat script, an AVI, an image;
3. what the headers declare, read by `inference.video_headers` before FFmpeg parses the file: a data reference
   to outside the file (`UnsupportedVideoFormat`), a frame size over the pixel limit (`VideoTooManyPixels`);
4. FFmpeg (PyAV) opens it through `open_video`: the demuxer is forced to the detected container, and
   `protocol_whitelist=file` and `format_whitelist=VIDEO_CONTAINERS` make any playlist, concat script or network
   reference fail to open rather than be followed. `max_pixels` caps what the decoders FFmpeg runs while
   reading stream parameters may allocate, so a codec header (an H.264 SPS) that claims more than its container
   cannot make it allocate a huge frame either;
5. exactly one video stream (cover art does not count; none: `NoVideoStream`), a decodable codec from
   `VIDEO_CODECS`, the frame size again (`VideoTooManyPixels`), the declared duration (container and stream,
   `VideoTooLong`), frame count (`VideoTooManyFrames`) and average frame rate (`VideoFrameRateTooHigh`);
6. the video packets, demuxed without decoding (stopping past `max_frames`): the real frame count, the duration
   they span, variable frame rate (packet durations that differ), truncation (fewer packets than the header
   declares: `InvalidVideo`); the limits again on what the packets show;
7. the first frame decoded (its size already checked): the rotation a player applies (display matrix side data,
   else a `rotate` tag), and proof that the stream decodes at all.

All FFmpeg failures become `InvalidVideo`; no PyAV exception leaves this module."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from inference.errors import (
    EngineError,
    InvalidTrim,
    InvalidVideo,
    NoVideoStream,
    UnsupportedVideoFormat,
    VideoFrameRateTooHigh,
    VideoTooLarge,
    VideoTooLong,
    VideoTooManyFrames,
    VideoTooManyPixels,
)
from inference.video_headers import read_header_facts

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

__all__ = [
    "OPEN_OPTIONS",
    "VIDEO_CODECS",
    "VIDEO_CONTAINERS",
    "Trim",
    "VideoLimits",
    "VideoProbe",
    "detect_video_container",
    "open_video",
    "probe_video",
    "resolve_trim",
    "video_stream",
]

VIDEO_CONTAINERS: Final = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm"
"""FFmpeg's `format_whitelist`: its ISO BMFF demuxer (mov,mp4,m4a,3gp,3g2,mj2) and its Matroska one."""

OPEN_OPTIONS: Final = {"protocol_whitelist": "file", "format_whitelist": VIDEO_CONTAINERS}
"""What every `av.open` of an upload is given: only local files, only those two demuxers."""

VIDEO_CODECS: Final = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "prores", "mjpeg"})
"""Video codecs decoded: what phones, cameras, browsers and editors write. Other decoders are not exposed."""

_DEMUXERS: Final = {"mp4": "mov", "matroska": "matroska"}
_QUICKTIME_FIRST_BOXES: Final = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_STILL_IMAGE_BRANDS: Final = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
# Packet durations within this fraction of the median (or two ticks of the time base) are one constant rate:
# Matroska's millisecond timestamps write 29.97 fps as 33 and 34 ms.
_VFR_TOLERANCE: Final = 0.1
# Packets fed to the decoder for the first frame (B-frame reordering and frame threads delay it).
_FIRST_FRAME_PACKETS: Final = 64


@dataclass(frozen=True)
class VideoLimits:
    """What `probe_video` accepts. Defaults: 512 MiB, 10 minutes, 4K UHD frames, 60 fps, 36,000 frames (10 minutes
    at 60 fps)."""

    max_bytes: int = 512 * 1024 * 1024
    max_duration_seconds: float = 600.0
    max_pixels_per_frame: int = 3840 * 2160
    max_fps: float = 60.0
    max_frames: int = 36_000

    def __post_init__(self) -> None:
        values = (self.max_bytes, self.max_duration_seconds, self.max_pixels_per_frame, self.max_fps, self.max_frames)
        if any(not value > 0 for value in values):
            raise ValueError("VideoLimits must be positive")


@dataclass(frozen=True)
class VideoProbe:
    """What a probed video is. `rotation`: degrees (0, 90, 180, 270) counter-clockwise that a player turns the
    stored frames to show them (FFmpeg's display matrix convention); `width` x `height` is the stored size.
    `duration_seconds` spans the video packets; `fps` is the average frame rate; `container` is "mp4" (ISO BMFF,
    MOV included) or "matroska" (WebM included)."""

    container: str
    duration_seconds: float
    fps: float
    variable_frame_rate: bool
    frame_count: int
    width: int
    height: int
    rotation: int
    video_codec: str
    pixel_format: str
    has_audio: bool
    audio_codec: str | None
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """The probe as JSON-ready primitives (floats rounded to microseconds and millihertz)."""
        values = asdict(self)
        values["duration_seconds"] = round(self.duration_seconds, 6)
        values["fps"] = round(self.fps, 3)
        return values


# --- detection and opening -------------------------------------------------------------------------------------


def detect_video_container(head: bytes) -> str | None:
    """The container of a file from its first bytes (at least 12): "mp4" for ISO BMFF (an `ftyp` box, or a
    QuickTime file starting with a movie box; HEIF/AVIF still images excluded), "matroska" for EBML (MKV, WebM),
    else None."""
    head = bytes(head[:64])
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if len(head) < 12:
        return None
    size = int.from_bytes(head[0:4], "big")
    kind = head[4:8]
    if kind == b"ftyp":
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
        return None if brands & _STILL_IMAGE_BRANDS else "mp4"
    if kind in _QUICKTIME_FIRST_BOXES and (size == 1 or size >= 8):
        return "mp4"
    return None


def _describe(head: bytes) -> str:
    """What a refused file looks like, for the error: a playlist and a concat script named as such."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"#EXTM3U") or b"#EXT-X-" in head:
        return "an HLS playlist"
    if text.startswith(b"ffconcat"):
        return "an ffconcat script"
    if text.startswith(b"<?xml") or text.startswith(b"<MPD"):
        return "an XML document (a DASH manifest?)"
    if head.startswith(b"RIFF"):
        return "a RIFF file (AVI?)"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "an MPEG transport stream"
    return "not a recognised video container"


def open_video(path: Path, container: str, *, max_pixels: int) -> InputContainer:
    """Open an upload with PyAV, safely: the demuxer forced to `container` ("mp4" or "matroska"), only the `file`
    protocol and the `VIDEO_CONTAINERS` formats allowed (a playlist, concat script or network reference fails to
    open), ISO BMFF external data references not followed, and decoders run while reading stream parameters
    capped at `max_pixels` per frame. FFmpeg errors raise `InvalidVideo`."""
    import av

    options = {**OPEN_OPTIONS, "max_pixels": str(max_pixels)}
    container_options = {"enable_drefs": "0", "use_absolute_path": "0"} if container == "mp4" else {}
    try:
        # "file:" explicitly: a path that looks like "proto:..." or "concat:..." is never read as a protocol.
        return av.open(
            f"file:{Path(path).resolve()}",
            mode="r",
            format=_DEMUXERS[container],
            options=options,
            container_options=container_options,
        )
    except av.FFmpegError as exc:
        raise InvalidVideo("The video could not be opened: it is corrupt or truncated.", reason=str(exc)) from exc


def video_stream(container: InputContainer) -> VideoStream:
    """The one video stream (attached pictures such as cover art do not count): NoVideoStream when there is
    none, UnsupportedVideoFormat when there are several."""
    streams = [s for s in container.streams.video if not _is_attached_picture(s)]
    if not streams:
        raise NoVideoStream("The file has no video stream.", streams=[s.type for s in container.streams])
    if len(streams) > 1:
        raise UnsupportedVideoFormat(
            f"The file has {len(streams)} video streams; send a video with exactly one.", video_streams=len(streams)
        )
    return streams[0]


def _is_attached_picture(stream: Any) -> bool:
    import av

    return bool(stream.disposition & av.stream.Disposition.attached_pic)


# --- probing ---------------------------------------------------------------------------------------------------


def probe_video(path: Path, *, limits: VideoLimits = VideoLimits()) -> VideoProbe:
    """Probe an uploaded video within `limits` (see the module's docstring for the order of the checks).

    Raises VideoTooLarge, InvalidVideo, UnsupportedVideoFormat, NoVideoStream, VideoTooManyPixels, VideoTooLong,
    VideoTooManyFrames or VideoFrameRateTooHigh."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(4096)
            if size > limits.max_bytes:
                raise VideoTooLarge(
                    f"The video is {size} bytes; the limit is {limits.max_bytes}.",
                    size=size,
                    max_bytes=limits.max_bytes,
                )
            if size == 0:
                raise InvalidVideo("The video file is empty.")
            container = detect_video_container(head)
            if container is None:
                raise UnsupportedVideoFormat(
                    f"Not a supported video: {_describe(head)}; send MP4, MOV, WebM or MKV.",
                    found=_describe(head),
                    supported=["mp4", "mov", "webm", "mkv"],
                )
            facts = read_header_facts(handle, container, size)
    except OSError as exc:
        raise InvalidVideo(f"The video could not be read: {exc.strerror}.") from exc
    if facts.external_reference is not None:
        raise UnsupportedVideoFormat(
            "The video refers to data outside the file; send a self-contained video.",
            reference=facts.external_reference,
        )
    for width, height in facts.frame_sizes:
        _check_pixels(width, height, limits)

    with open_video(path, container, max_pixels=limits.max_pixels_per_frame) as opened:
        try:
            return _probe_open(opened, container, size, limits)
        except EngineError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # PyAV's FFmpegError subclasses, ValueError on odd timestamps, ...
            raise InvalidVideo("The video is corrupt or truncated.", reason=str(exc)[:300]) from exc


def _probe_open(opened: InputContainer, container: str, size: int, limits: VideoLimits) -> VideoProbe:
    stream = video_stream(opened)
    context = stream.codec_context
    codec = context.name if context is not None else None
    if codec not in VIDEO_CODECS:
        raise UnsupportedVideoFormat(
            f"The video codec {codec or 'unknown'} is not supported; send H.264, HEVC, VP8, VP9, AV1, MPEG-4, "
            "ProRes or Motion JPEG.",
            codec=codec,
            supported=sorted(VIDEO_CODECS),
        )
    width, height = context.width, context.height
    if width <= 0 or height <= 0:
        raise InvalidVideo(
            "The video stream declares no frame size its decoder accepts.", width=width, height=height, codec=codec
        )
    _check_pixels(width, height, limits)

    declared_seconds = max(_stream_seconds(stream.duration, stream.time_base), _container_seconds(opened))
    _check_duration(declared_seconds, limits)
    if stream.frames > limits.max_frames:
        raise _too_many_frames(stream.frames, limits)
    rate = _average_rate(stream)
    if rate is not None:
        _check_fps(float(rate), limits)

    # The first frame is decoded below: its decoder refuses any frame over the limit (an in-band SPS too).
    context.options = {"max_pixels": str(limits.max_pixels_per_frame)}
    packets = _scan_packets(opened, stream, limits)
    if stream.frames and packets.count < stream.frames:
        raise InvalidVideo(
            f"The video is truncated: its header declares {stream.frames} frames, the file holds {packets.count}.",
            declared_frames=stream.frames,
            frames=packets.count,
        )
    if packets.count == 0:
        raise InvalidVideo("The video stream has no frames.")
    duration = packets.seconds or _stream_seconds(stream.duration, stream.time_base) or declared_seconds
    _check_duration(duration, limits)
    fps = float(rate) if rate is not None and not packets.variable else packets.count / duration if duration else 0.0
    if fps <= 0:
        raise InvalidVideo("The video's frame rate cannot be read from its timestamps.")
    _check_fps(fps, limits)

    audio = next(iter(opened.streams.audio), None)
    audio_codec = audio.codec_context.name if audio is not None and audio.codec_context is not None else None
    return VideoProbe(
        container=container,
        duration_seconds=duration,
        fps=fps,
        variable_frame_rate=packets.variable,
        frame_count=packets.count,
        width=width,
        height=height,
        rotation=packets.rotation,
        video_codec=codec,
        pixel_format=context.pix_fmt or "unknown",
        has_audio=audio is not None,
        audio_codec=audio_codec if audio is not None else None,
        size_bytes=size,
    )


def _check_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width * height > limits.max_pixels_per_frame:
        raise VideoTooManyPixels(
            f"The video's frames are {width}x{height} ({width * height} pixels); the limit is "
            f"{limits.max_pixels_per_frame} pixels per frame.",
            width=width,
            height=height,
            pixels=width * height,
            max_pixels_per_frame=limits.max_pixels_per_frame,
        )


def _check_duration(seconds: float, limits: VideoLimits) -> None:
    if seconds > limits.max_duration_seconds:
        raise VideoTooLong(
            f"The video lasts {seconds:.1f} s; the limit is {limits.max_duration_seconds:g} s.",
            duration_seconds=round(seconds, 3),
            max_duration_seconds=limits.max_duration_seconds,
        )


def _check_fps(fps: float, limits: VideoLimits) -> None:
    if fps > limits.max_fps:
        raise VideoFrameRateTooHigh(
            f"The video has {fps:.2f} frames per second; the limit is {limits.max_fps:g}.",
            fps=round(fps, 3),
            max_fps=limits.max_fps,
        )


def _too_many_frames(frames: int, limits: VideoLimits) -> VideoTooManyFrames:
    return VideoTooManyFrames(
        f"The video has more than {limits.max_frames} frames.", frames=frames, max_frames=limits.max_frames
    )


def _stream_seconds(duration: int | None, time_base: Fraction | None) -> float:
    return float(duration * time_base) if duration and time_base else 0.0


def _container_seconds(opened: InputContainer) -> float:
    return opened.duration / 1_000_000 if opened.duration and opened.duration > 0 else 0.0


def _average_rate(stream: VideoStream) -> Fraction | None:
    rate = stream.average_rate or stream.guessed_rate
    return rate if rate is not None and rate > 0 else None


@dataclass
class _Packets:
    count: int
    seconds: float
    variable: bool
    rotation: int


def _scan_packets(opened: InputContainer, stream: VideoStream, limits: VideoLimits) -> _Packets:
    """Demux the video packets: how many, the time they span, and whether their durations vary; stops with
    VideoTooManyFrames past the frame limit, whatever the header said. Only the first packets are decoded, up to
    the first frame (its size already checked): its rotation, and proof that the stream decodes at all."""
    stamps: list[int] = []
    count = 0
    last_pts, last_duration = None, 0
    first_frame = None
    for packet in opened.demux(stream):
        if packet.size == 0:  # the flush packet PyAV yields at the end
            continue
        count += 1
        if count > limits.max_frames:
            raise _too_many_frames(count, limits)
        if first_frame is None and count <= _FIRST_FRAME_PACKETS:
            first_frame = next(iter(packet.decode()), None)
        if packet.pts is not None and not packet.is_discard:
            stamps.append(packet.pts)
            if last_pts is None or packet.pts > last_pts:
                last_pts, last_duration = packet.pts, packet.duration or 0
    if first_frame is None:
        first_frame = next(iter(stream.codec_context.decode(None)), None) if count else None
    if count and first_frame is None:
        raise InvalidVideo("No frame of the video could be decoded.")
    rotation = _rotation(first_frame, stream) if first_frame is not None else 0
    if len(stamps) < 1 or stream.time_base is None:
        return _Packets(count=count, seconds=0.0, variable=False, rotation=rotation)
    stamps.sort()
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False) if b > a]
    typical = sorted(gaps)[len(gaps) // 2] if gaps else last_duration
    span = stamps[-1] - stamps[0] + (last_duration or typical)
    variable = bool(gaps) and max(gaps) - min(gaps) > max(2, typical * _VFR_TOLERANCE)
    return _Packets(count=count, seconds=float(span * stream.time_base), variable=variable, rotation=rotation)


def _rotation(frame: Any, stream: VideoStream) -> int:
    """The rotation (0, 90, 180 or 270, counter-clockwise) of a decoded frame, from its display matrix, else the
    stream's `rotate` tag (which old writers set, clockwise)."""
    degrees = frame.rotation
    if not degrees:
        tag = stream.metadata.get("rotate", "")
        degrees = -int(tag) if tag.lstrip("-").isdigit() else 0
    return int(round(degrees / 90.0)) * 90 % 360


# --- trimming --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trim:
    """The part of a video to process, in seconds from its first frame."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def billable_seconds(self) -> int:
        """Started seconds of the trimmed duration, at least 1 (rounded to the microsecond first, so that 10.0
        computed as 10.000000001 is 10)."""
        return max(1, math.ceil(round(self.seconds, 6)))


def resolve_trim(probe: VideoProbe, *, trim_start: float | None, trim_end: float | None) -> Trim:
    """The trim to apply: `trim_start` (default 0) to `trim_end` (default the end). An end past the video's end is
    the end. InvalidTrim for a value that is not a finite number, a negative start, a start at or past the end,
    an end before the start, or a range shorter than one frame."""
    duration = probe.duration_seconds
    start = _trim_value(trim_start, "trim_start", 0.0)
    end = _trim_value(trim_end, "trim_end", duration)
    if start < 0:
        raise InvalidTrim("trim_start cannot be negative.", trim_start=start)
    if start >= duration:
        raise InvalidTrim(
            f"trim_start ({start:g} s) is not before the video's end ({duration:.3f} s).",
            trim_start=start,
            duration_seconds=round(duration, 6),
        )
    end = min(end, duration)
    if end <= start:
        raise InvalidTrim(
            f"trim_end ({end:g} s) must be after trim_start ({start:g} s).", trim_start=start, trim_end=end
        )
    frame_seconds = 1.0 / probe.fps if probe.fps > 0 else 0.0
    if end - start < frame_seconds - 1e-9:
        raise InvalidTrim(
            f"The trimmed range ({end - start:.3f} s) is shorter than one frame ({frame_seconds:.3f} s).",
            trim_start=start,
            trim_end=end,
        )
    return Trim(start=start, end=end)


def _trim_value(value: float | None, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidTrim(f"{name} must be a finite number of seconds, not {value!r}.", field=name)
    return float(value)
