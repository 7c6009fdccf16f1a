"""Tiny video clips made in code for the video tests (PyAV encodes them in milliseconds), and the crafted files
the probe must refuse: an H.264 stream whose headers claim a huge frame, a 10-hour duration, a data reference to
another file, a hand-written Matroska file."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from inference.models import draw_demo_face

Face = tuple[int, int, int, int]  # x, y, side, identity (in the upright picture)
WIDTH, HEIGHT = 192, 144


def background(width: int = WIDTH, height: int = HEIGHT) -> NDArray[np.uint8]:
    """A dark, smooth background (the demo detector's rule: channel mean <= 85) that H.264 keeps nearly exact, so
    that a frame passed through shows only the encoder's small loss."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.dstack([20 + 30 * x / width, 25 + 20 * y / height, 30 + 15 * (x + y) / (width + height)])
    return base.astype(np.uint8)


def picture(faces: Sequence[Face], width: int = WIDTH, height: int = HEIGHT) -> NDArray[np.uint8]:
    image = background(width, height)
    for x, y, side, identity in faces:
        draw_demo_face(image, x, y, side, identity=identity)
    return image


@dataclass
class Clip:
    path: Path
    frames: list[NDArray[np.uint8]]  # the upright pictures encoded, in order
    pts_seconds: list[float]


def make_clip(
    path: Path,
    *,
    container: str = "mp4",
    codec: str = "libx264",
    size: tuple[int, int] = (WIDTH, HEIGHT),
    fps: int = 10,
    frames: int = 20,
    faces: Callable[[int], Sequence[Face]] = lambda i: [(60, 40, 64, 1)],
    audio: str | None = None,
    rotation: int = 0,
    frame_seconds: Callable[[int], float] | None = None,
) -> Clip:
    """Encode a clip: frame i shows `faces(i)` drawn upright. `rotation` (counter-clockwise, as players apply
    it) stores each frame turned the other way with a display matrix, as a phone does. `frame_seconds(i)` gives
    frame i's own duration (a variable frame rate). `audio`: an audio codec (a 440 Hz tone), or None."""
    width, height = size
    pictures = [picture(faces(i), width, height) for i in range(frames)]
    times: list[float] = []
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=fps, options={"crf": "10"} if codec == "libx264" else {})
        stored_w, stored_h = (height, width) if rotation in (90, 270) else (width, height)
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, "yuv420p"
        time_base = Fraction(1, 1000)
        stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        sound = _add_audio(output, audio)
        clock = 0.0
        for image in pictures:
            stored = np.ascontiguousarray(np.rot90(image, k=-rotation // 90)) if rotation else image
            frame = av.VideoFrame.from_ndarray(stored, format="bgr24")
            frame.pts, frame.time_base = round(clock * 1000), time_base
            times.append(clock)
            clock += frame_seconds(len(times) - 1) if frame_seconds else 1.0 / fps
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
        if sound is not None:
            _write_tone(output, sound, clock)
    return Clip(path=path, frames=pictures, pts_seconds=times)


def _add_audio(output: av.container.OutputContainer, codec: str | None) -> av.audio.stream.AudioStream | None:
    if codec is None:
        return None
    stream = output.add_stream(codec, rate=48000)
    stream.layout = "stereo"
    return stream  # type: ignore[return-value]


def _write_tone(output: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate = 48000
    chunk = stream.codec_context.frame_size or 1024
    total = int(seconds * rate)
    for start in range(0, total, chunk):
        t = (np.arange(start, start + chunk) / rate).astype(np.float32)
        wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        fmt = stream.format.name
        if fmt == "fltp":
            data = np.stack([wave, wave])
        elif fmt == "s16":
            data = (np.repeat(wave, 2) * 32767).astype(np.int16)[None]
        else:
            raise ValueError(f"no tone for sample format {fmt}")
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
        frame.sample_rate, frame.pts = rate, start
        output.mux(stream.encode(frame))
    output.mux(stream.encode(None))


def make_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w", format="mp4") as output:
        stream = _add_audio(output, "aac")
        assert stream is not None
        _write_tone(output, stream, seconds)
    return path


def decode_frames(path: Path) -> list[NDArray[np.uint8]]:
    """Every frame of a video as BGR (turned upright by its display matrix, as a player shows it)."""
    frames = []
    with av.open(str(path)) as opened:
        for frame in opened.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            turns = round(frame.rotation / 90) % 4
            frames.append(np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image)
    return frames


# --- crafted ISO BMFF ------------------------------------------------------------------------------------------

_CONTAINERS = {b"moov", b"trak", b"edts", b"mdia", b"minf", b"stbl", b"dinf"}


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    found, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        found.append((kind, data[offset + 8 : offset + size]))
        offset += size
    return found


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def rewrite_moov(data: bytes, edit: Callable[[bytes, bytes], bytes]) -> bytes:
    """The MP4 `data` (its movie box last, as PyAV writes it without faststart, so no offset moves) with
    `edit(kind, body)` applied to every box inside the movie box, sizes recomputed."""

    def walk(body: bytes) -> bytes:
        out = b""
        for kind, inner in _boxes(body):
            if kind in _CONTAINERS:
                inner = walk(inner)
            elif kind == b"stsd":
                inner = inner[:8] + walk(inner[8:])
            elif kind == b"avc1":
                inner = edit(kind, inner[:78]) + walk(inner[78:])
                out += _box(kind, inner)
                continue
            out += _box(kind, edit(kind, inner))
        return out

    top = _boxes(data)
    assert top[-1][0] == b"moov", "the movie box must come last"
    head = data[: len(data) - 8 - len(top[-1][1])]
    return head + _box(b"moov", walk(top[-1][1]))


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def bit(self) -> int:
        value = (self.data[self.position >> 3] >> (7 - (self.position & 7))) & 1
        self.position += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = value << 1 | self.bit()
        return value

    def golomb(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.bits(zeros)


class _Writer:
    def __init__(self) -> None:
        self.out: list[int] = []

    def bits(self, count: int, value: int) -> None:
        self.out.extend((value >> i) & 1 for i in range(count - 1, -1, -1))

    def golomb(self, value: int) -> None:
        value += 1
        self.bits(value.bit_length() - 1, 0)
        self.bits(value.bit_length(), value)

    def data(self) -> bytes:
        bits = self.out + [0] * (-len(self.out) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def _unescape(data: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in data:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _escape(data: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in data:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def sps_with_size(nal: bytes, width: int, height: int) -> bytes:
    """An H.264 sequence parameter set (x264's, any profile without scaling matrices) rewritten to declare
    `width` x `height` (multiples of 16), with no cropping."""
    reader, writer = _Bits(_unescape(nal[1:])), _Writer()
    profile = reader.bits(8)
    writer.bits(8, profile)
    writer.bits(16, reader.bits(16))  # constraint flags, level
    writer.golomb(reader.golomb())  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = reader.golomb()
        writer.golomb(chroma)
        if chroma == 3:
            writer.bits(1, reader.bit())
        writer.golomb(reader.golomb())  # bit depths
        writer.golomb(reader.golomb())
        writer.bits(1, reader.bit())
        assert reader.bit() == 0, "scaling matrices are not supported here"
        writer.bits(1, 0)
    writer.golomb(reader.golomb())  # log2_max_frame_num_minus4
    order = reader.golomb()
    writer.golomb(order)
    assert order in (0, 2), "pic_order_cnt_type 1 is not supported here"
    if order == 0:
        writer.golomb(reader.golomb())
    writer.golomb(reader.golomb())  # max_num_ref_frames
    writer.bits(1, reader.bit())
    reader.golomb(), reader.golomb()  # the old size, in macroblocks
    writer.golomb(width // 16 - 1)
    writer.golomb(height // 16 - 1)
    frame_mbs_only = reader.bit()
    assert frame_mbs_only == 1
    writer.bits(1, 1)
    writer.bits(1, reader.bit())  # direct_8x8_inference
    if reader.bit():  # cropping: dropped
        for _ in range(4):
            reader.golomb()
    writer.bits(1, 0)
    while reader.position < len(reader.data) * 8:  # the VUI and the trailing bits, as they were
        writer.bits(1, reader.bit())
    return nal[:1] + _escape(writer.data())


def claim_frame_size(data: bytes, width: int, height: int, *, in_container: bool) -> bytes:
    """An H.264 MP4 whose SPS (and, when `in_container`, its sample entry, capped at 65535 by the 16-bit
    fields) declares `width` x `height`."""

    def edit(kind: bytes, body: bytes) -> bytes:
        if kind == b"avcC":
            count = body[5] & 31
            assert count == 1
            (length,) = struct.unpack_from(">H", body, 6)
            sps = sps_with_size(body[8 : 8 + length], width, height)
            return body[:6] + struct.pack(">H", len(sps)) + sps + body[8 + length :]
        if kind == b"avc1" and in_container:
            return body[:24] + struct.pack(">HH", min(width, 65535), min(height, 65535)) + body[28:]
        return body

    return rewrite_moov(data, edit)


def claim_duration(data: bytes, seconds: float) -> bytes:
    """An MP4 of one video track whose sample table says its frames last `seconds` in all (each as long as the
    others), and whose movie header, media header and edit list say so too."""
    scales: dict[bytes, int] = {}

    def edit(kind: bytes, body: bytes) -> bytes:
        if kind in (b"mvhd", b"mdhd") and body[0] == 0:
            (scales[kind],) = struct.unpack_from(">I", body, 12)
            return body[:16] + struct.pack(">I", int(seconds * scales[kind])) + body[20:]
        if kind == b"stts":
            count = sum(
                struct.unpack_from(">I", body, 8 + 8 * i)[0] for i in range(struct.unpack_from(">I", body, 4)[0])
            )
            delta = int(seconds * scales[b"mdhd"] / count)
            return body[:4] + struct.pack(">III", 1, count, delta)
        if kind == b"elst" and body[0] == 0:  # one edit spanning the whole track
            return body[:8] + struct.pack(">I", int(seconds * scales[b"mvhd"])) + body[12:]
        return body

    return rewrite_moov(data, edit)


def refer_to_file(data: bytes, location: str) -> bytes:
    """An MP4 whose data reference says the samples are in another file (a `url ` entry without the
    self-contained flag)."""

    def edit(kind: bytes, body: bytes) -> bytes:
        if kind == b"dref":
            entry = _box(b"url ", b"\x00\x00\x00\x00" + location.encode() + b"\x00")
            return body[:4] + struct.pack(">I", 1) + entry
        return body

    return rewrite_moov(data, edit)


# --- a hand-written Matroska file ------------------------------------------------------------------------------


def _ebml(ident: int, payload: bytes) -> bytes:
    return ident.to_bytes((ident.bit_length() + 7) // 8, "big") + b"\x01" + len(payload).to_bytes(7, "big") + payload


def _uint(ident: int, value: int) -> bytes:
    return _ebml(ident, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def matroska_claiming(source_mp4: Path, width: int, height: int) -> bytes:
    """A one-frame MKV holding the first H.264 frame of `source_mp4`, whose track header (PixelWidth,
    PixelHeight) and SPS both declare `width` x `height`."""
    with av.open(str(source_mp4)) as opened:
        stream = opened.streams.video[0]
        avcc = bytes(stream.codec_context.extradata or b"")
        packet = next(p for p in opened.demux(stream) if p.size)
        frame = bytes(packet)
    (length,) = struct.unpack_from(">H", avcc, 6)
    sps = sps_with_size(avcc[8 : 8 + length], width, height)
    avcc = avcc[:6] + struct.pack(">H", len(sps)) + sps + avcc[8 + length :]
    header = _ebml(
        0x1A45DFA3,
        _uint(0x4286, 1) + _uint(0x42F7, 1) + _uint(0x42F2, 4) + _uint(0x42F3, 8) + _ebml(0x4282, b"matroska")
        + _uint(0x4287, 4) + _uint(0x4285, 2),
    )  # fmt: skip
    info = _ebml(0x1549A966, _uint(0x2AD7B1, 1_000_000) + _ebml(0x4489, struct.pack(">d", 100.0)))
    video = _ebml(0xE0, _uint(0xB0, width) + _uint(0xBA, height))
    track = _ebml(
        0xAE,
        _uint(0xD7, 1) + _uint(0x73C5, 1) + _uint(0x83, 1) + _ebml(0x86, b"V_MPEG4/ISO/AVC") + _ebml(0x63A2, avcc)
        + video,
    )  # fmt: skip
    block = _ebml(0xA3, b"\x81\x00\x00\x80" + frame)
    cluster = _ebml(0x1F43B675, _uint(0xE7, 0) + block)
    return header + _ebml(0x18538067, info + _ebml(0x1654AE6B, track) + cluster)
