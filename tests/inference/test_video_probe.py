"""The video probe: containers recognised by content and opened with FFmpeg's whitelists, what it reports for
real clips (constant and variable frame rate, rotated, with and without audio, MP4/MOV/MKV/WebM), every refusal
with its own error before anything is decoded, and trims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from inference.errors import (
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
from inference.video import (
    OPEN_OPTIONS,
    Trim,
    VideoLimits,
    VideoProbe,
    detect_video_container,
    open_video,
    probe_video,
    resolve_trim,
)
from tests.inference.video_helpers import (
    claim_duration,
    claim_frame_size,
    make_audio_only,
    make_clip,
    matroska_claiming,
    refer_to_file,
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe_clips")


@pytest.fixture(scope="module")
def plain_mp4(clips: Path) -> Path:
    return make_clip(clips / "plain.mp4", frames=20).path


def untouched(path: Path) -> float:
    """Set the file's access time to the epoch, so that a later read shows (on relatime or strictatime mounts)."""
    os.utime(path, (0, path.stat().st_mtime))
    return path.stat().st_atime


def reads_are_visible(directory: Path) -> bool:
    """Whether this file system records reads in the access time (not mounted noatime)."""
    probe = directory / "atime-check"
    probe.write_bytes(b"x")
    untouched(probe)
    probe.read_bytes()
    return probe.stat().st_atime != 0


# --- what the probe reports ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "container", "codec", "audio", "reported"),
    [
        ("a.mp4", "mp4", "libx264", "aac", ("mp4", "h264", "aac")),
        ("a.mov", "mov", "libx264", "aac", ("mp4", "h264", "aac")),
        ("a.mkv", "matroska", "libx264", "libopus", ("matroska", "h264", "opus")),
        ("a.webm", "webm", "libvpx-vp9", "libopus", ("matroska", "vp9", "opus")),
    ],
)
def test_clips_in_every_container(
    clips: Path, name: str, container: str, codec: str, audio: str, reported: tuple[str, str, str]
) -> None:
    clip = make_clip(clips / name, container=container, codec=codec, audio=audio, frames=20)
    probe = probe_video(clip.path)
    assert (probe.container, probe.video_codec, probe.audio_codec) == reported
    assert probe.has_audio
    assert (probe.width, probe.height, probe.rotation) == (192, 144, 0)
    assert probe.frame_count == 20
    assert probe.fps == pytest.approx(10.0)
    assert probe.duration_seconds == pytest.approx(2.0, abs=0.01)
    assert not probe.variable_frame_rate
    assert probe.pixel_format == "yuv420p"
    assert probe.size_bytes == clip.path.stat().st_size


def test_no_audio(plain_mp4: Path) -> None:
    probe = probe_video(plain_mp4)
    assert not probe.has_audio
    assert probe.audio_codec is None


def test_variable_frame_rate_is_detected_and_accepted(clips: Path) -> None:
    # Alternating 50 ms and 150 ms frames: 20 frames over 2 s, average 10 fps.
    clip = make_clip(clips / "vfr.mp4", frames=20, frame_seconds=lambda i: 0.05 if i % 2 else 0.15)
    probe = probe_video(clip.path)
    assert probe.variable_frame_rate
    assert probe.frame_count == 20
    assert probe.duration_seconds == pytest.approx(2.0, abs=0.01)
    assert probe.fps == pytest.approx(10.0, rel=0.01)


def test_rotated_phone_video_reports_its_rotation(clips: Path) -> None:
    clip = make_clip(clips / "rotated.mp4", rotation=90, frames=5)
    probe = probe_video(clip.path)
    assert probe.rotation == 90
    assert (probe.width, probe.height) == (144, 192)  # as stored; players turn it to 192x144


def test_as_dict_is_json_ready(plain_mp4: Path) -> None:
    values = probe_video(plain_mp4).as_dict()
    assert json.loads(json.dumps(values)) == values
    assert set(values) == set(VideoProbe.__dataclass_fields__)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", "mp4"),
        (b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat", "mp4"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", None),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", None),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "matroska"),
        (b"#EXTM3U\n#EXT-X-VERSION:3\n", None),
        (b"RIFF\x00\x00\x00\x00AVI LIST", None),
        (b"", None),
    ],
)
def test_container_from_content(head: bytes, expected: str | None) -> None:
    assert detect_video_container(head) == expected


# --- refusals --------------------------------------------------------------------------------------------------


def test_zero_length_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InvalidVideo):
        probe_video(empty)


@pytest.mark.parametrize("faststart", [True, False], ids=["movie-header-first", "movie-header-last"])
def test_truncated_mp4(clips: Path, tmp_path: Path, faststart: bool) -> None:
    source = clips / f"whole-{faststart}.mp4"
    make_clip(source, frames=20)
    if faststart:  # remux with the movie header first: the cut leaves a readable header and half the samples
        with (
            av.open(str(source)) as opened,
            av.open(str(tmp_path / "fs.mp4"), "w", options={"movflags": "+faststart"}) as out,
        ):
            stream = out.add_stream_from_template(opened.streams.video[0])
            for packet in opened.demux(opened.streams.video[0]):
                if packet.size:
                    packet.stream = stream
                    out.mux(packet)
        source = tmp_path / "fs.mp4"
    data = source.read_bytes()
    cut = tmp_path / "cut.mp4"
    # The last 100 bytes: the last few (small) frames, or the end of the movie header.
    cut.write_bytes(data[:-100])
    with pytest.raises(InvalidVideo) as info:
        probe_video(cut)
    if faststart:  # the header promises 20 frames; the packets stop short
        assert info.value.extra["frames"] < info.value.extra["declared_frames"] == 20


def test_audio_only(tmp_path: Path) -> None:
    with pytest.raises(NoVideoStream) as info:
        probe_video(make_audio_only(tmp_path / "sound.m4a"))
    assert info.value.code == "no_video_stream"
    assert info.value.status_code == 422


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("list.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{segment}\n#EXT-X-ENDLIST\n"),
        ("list.mp4", "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{segment}\n#EXT-X-ENDLIST\n"),
        ("list.mkv", "\ufeff#EXTM3U\n#EXTINF:2,\n{segment}\n"),
        ("concat.txt", "ffconcat version 1.0\nfile '{segment}'\n"),
    ],
)
def test_playlists_are_refused_and_never_followed(tmp_path: Path, plain_mp4: Path, name: str, text: str) -> None:
    segment = tmp_path / "segment.mp4"
    segment.write_bytes(plain_mp4.read_bytes())
    playlist = tmp_path / name
    playlist.write_text(text.format(segment=segment))
    untouched(segment)
    with pytest.raises(UnsupportedVideoFormat) as info:
        probe_video(playlist)
    assert info.value.status_code == 415
    # Even handed straight to FFmpeg, past the content check: the whitelists refuse the playlist demuxers.
    with pytest.raises(av.FFmpegError):
        av.open(str(playlist), options=OPEN_OPTIONS)
    for container in ("mp4", "matroska"):
        with pytest.raises(InvalidVideo):
            open_video(playlist, container, max_pixels=10**6)
    assert segment.stat().st_atime == 0, "the file the playlist points at was read"
    if name.endswith(".m3u8") or name == "concat.txt":
        # The same playlist without the whitelists is followed (so the check above can see a read).
        if not reads_are_visible(tmp_path):
            pytest.skip("this file system does not record reads")
        with av.open(str(playlist), options={"safe": "0"}) as followed:  # concat: absolute paths allowed
            next(followed.demux())
        assert segment.stat().st_atime != 0


def test_an_mp4_with_a_reference_to_another_file_is_refused(tmp_path: Path, plain_mp4: Path) -> None:
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(plain_mp4.read_bytes())
    crafted = tmp_path / "refers.mp4"
    crafted.write_bytes(refer_to_file(plain_mp4.read_bytes(), f"file://{elsewhere}"))
    untouched(elsewhere)
    with pytest.raises(UnsupportedVideoFormat) as info:
        probe_video(crafted)
    assert str(elsewhere) in info.value.extra["reference"]
    assert elsewhere.stat().st_atime == 0


MEASURE = """
import resource, sys
from pathlib import Path
import av  # loaded before the first reading, like everything the probe imports
from inference.errors import EngineError
from inference.video import probe_video
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    probe_video(Path(sys.argv[1]))
    print("accepted")
except EngineError as exc:
    print(type(exc).__name__, exc.extra.get("width"), exc.extra.get("height"))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def probe_in_a_process(path: Path) -> tuple[str, int]:
    """The probe's outcome and how much its process's peak memory grew (MB), measured in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=60, check=True
    )
    outcome, grown = done.stdout.strip().splitlines()
    return outcome, int(grown)


def test_a_frame_claiming_100k_by_100k_is_refused_without_allocating(tmp_path: Path, plain_mp4: Path) -> None:
    # Matroska: the track header and the SPS both claim it (one frame of 100,000 x 100,000 = 15 GB as YUV).
    mkv = tmp_path / "huge.mkv"
    mkv.write_bytes(matroska_claiming(plain_mp4, 100_000, 100_000))
    outcome, grown = probe_in_a_process(mkv)
    assert outcome == "VideoTooManyPixels 100000 100000"
    assert grown < 16
    # MP4: the sample entry claims what its 16-bit fields can (65535) and the SPS 100,000.
    mp4 = tmp_path / "huge.mp4"
    mp4.write_bytes(claim_frame_size(plain_mp4.read_bytes(), 100_000, 100_000, in_container=True))
    outcome, grown = probe_in_a_process(mp4)
    assert outcome == "VideoTooManyPixels 65535 65535"
    assert grown < 16


def test_a_codec_header_claiming_more_than_its_container_allocates_nothing_either(
    tmp_path: Path, plain_mp4: Path
) -> None:
    # Only the SPS claims 8192 x 8192; the container says 192 x 144. FFmpeg reads the SPS to fill in the stream's
    # parameters, with the decoders capped at the pixel limit (a 67 MP frame would take about 100 MB).
    mp4 = tmp_path / "sps.mp4"
    mp4.write_bytes(claim_frame_size(plain_mp4.read_bytes(), 8192, 8192, in_container=False))
    outcome, grown = probe_in_a_process(mp4)
    assert outcome == "VideoTooManyPixels 8192 8192"
    assert grown < 48
    # An SPS past what FFmpeg's decoders accept at all leaves no frame size: refused as invalid.
    mp4.write_bytes(claim_frame_size(plain_mp4.read_bytes(), 100_000, 100_000, in_container=False))
    with pytest.raises(InvalidVideo):
        probe_video(mp4)


def test_a_10_hour_duration_is_refused(tmp_path: Path, plain_mp4: Path) -> None:
    crafted = tmp_path / "long.mp4"
    crafted.write_bytes(claim_duration(plain_mp4.read_bytes(), 10 * 3600))
    with pytest.raises(VideoTooLong) as info:
        probe_video(crafted)
    assert info.value.extra["duration_seconds"] == pytest.approx(36000, rel=0.001)


@pytest.mark.parametrize(
    ("limits", "error"),
    [
        (VideoLimits(max_bytes=1000), VideoTooLarge),
        (VideoLimits(max_duration_seconds=1.5), VideoTooLong),
        (VideoLimits(max_pixels_per_frame=192 * 143), VideoTooManyPixels),
        (VideoLimits(max_fps=9.5), VideoFrameRateTooHigh),
        (VideoLimits(max_frames=19), VideoTooManyFrames),
    ],
)
def test_each_limit_has_its_own_error(plain_mp4: Path, limits: VideoLimits, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        probe_video(plain_mp4, limits=limits)
    assert info.value.input_error  # type: ignore[attr-defined]


def test_frames_are_counted_from_packets_when_the_header_has_no_count(clips: Path) -> None:
    # Matroska headers carry no frame count: the packets are counted, and the count stops past the limit.
    clip = make_clip(clips / "count.mkv", container="matroska", frames=20)
    assert probe_video(clip.path).frame_count == 20
    with pytest.raises(VideoTooManyFrames) as info:
        probe_video(clip.path, limits=VideoLimits(max_frames=12))
    assert info.value.extra["frames"] == 13


def test_two_video_streams_are_refused(tmp_path: Path, plain_mp4: Path) -> None:
    doubled = tmp_path / "two.mp4"
    with av.open(str(plain_mp4)) as opened, av.open(str(doubled), "w") as out:
        source = opened.streams.video[0]
        streams = [out.add_stream_from_template(source), out.add_stream_from_template(source)]
        for packet in opened.demux(source):
            if packet.size:
                for stream in streams:
                    packet.stream = stream
                    out.mux(packet)
    with pytest.raises(UnsupportedVideoFormat):
        probe_video(doubled)


def test_an_image_is_not_a_video(tmp_path: Path) -> None:
    png = tmp_path / "image.mp4"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(UnsupportedVideoFormat):
        probe_video(png)


# --- trims -----------------------------------------------------------------------------------------------------


def probe_of(seconds: float, fps: float = 10.0) -> VideoProbe:
    return VideoProbe(
        container="mp4",
        duration_seconds=seconds,
        fps=fps,
        variable_frame_rate=False,
        frame_count=int(seconds * fps),
        width=192,
        height=144,
        rotation=0,
        video_codec="h264",
        pixel_format="yuv420p",
        has_audio=False,
        audio_codec=None,
        size_bytes=1000,
    )


@pytest.mark.parametrize(
    ("start", "end", "expected", "billable"),
    [
        (None, None, (0.0, 12.5), 13),
        (2.0, None, (2.0, 12.5), 11),
        (None, 3.0, (0.0, 3.0), 3),
        (1.5, 2.0, (1.5, 2.0), 1),
        (0, 99, (0.0, 12.5), 13),  # an end past the end is the end
        (0.1, 10.1, (0.1, 10.1), 10),  # 10.000000000000002 s is 10 started seconds
    ],
)
def test_resolve_trim(start: float | None, end: float | None, expected: tuple[float, float], billable: int) -> None:
    trim = resolve_trim(probe_of(12.5), trim_start=start, trim_end=end)
    assert (trim.start, trim.end) == pytest.approx(expected)
    assert trim.billable_seconds == billable


@pytest.mark.parametrize(
    ("start", "end"),
    [(-1, None), (12.5, None), (13, None), (3, 3), (4, 2), (float("nan"), None), (None, float("inf")), (1, 1.05)],
)
def test_invalid_trims(start: float | None, end: float | None) -> None:
    with pytest.raises(InvalidTrim) as info:
        resolve_trim(probe_of(12.5), trim_start=start, trim_end=end)
    assert info.value.code == "invalid_trim"


def test_a_trim_is_at_least_one_billable_second() -> None:
    assert Trim(start=0.0, end=0.1).billable_seconds == 1
    assert Trim(start=0.0, end=1.0).billable_seconds == 1
    assert Trim(start=0.0, end=1.001).billable_seconds == 2
