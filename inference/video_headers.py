"""What a video's container headers declare, read before FFmpeg parses the file.

Two facts are read here, with bounded reads and no decoding, so that the probe can refuse a file on them before
any demuxer or decoder runs:

* the frame sizes the video tracks declare (ISO BMFF: each visual sample entry's width and height; Matroska: each
  video track's PixelWidth and PixelHeight), so a file claiming 100,000 x 100,000 pixels is refused from its
  header;
* ISO BMFF data references (`dref`) to data outside the file (an entry without the self-contained flag: a `url `,
  `urn ` or QuickTime `alis` pointing elsewhere). FFmpeg does not follow them unless `enable_drefs` is set, and the
  probe never sets it; such a file is refused anyway, never half-read.

Anything this reader does not understand is left to FFmpeg, which opens the file next with the format and
protocol whitelists (`inference.video`): this module only ever refuses on what it positively read."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Final

__all__ = ["HeaderFacts", "read_header_facts"]

# A movie header (moov) of a 10-minute 60 fps video is well under 2 MB; anything far above is not a video we take.
MAX_MOOV_BYTES: Final = 64 * 1024 * 1024
# Top-level ISO BMFF boxes read before the movie header, and Matroska elements read before the first cluster.
MAX_TOP_LEVEL: Final = 4096
# Nested boxes or elements visited in one header: bounds the work on a header crafted as millions of tiny boxes.
MAX_NODES: Final = 200_000

_BOX_CONTAINERS: Final = {b"moov", b"mdia", b"minf", b"dinf", b"stbl", b"edts"}


@dataclass
class HeaderFacts:
    """`frame_sizes`: (width, height) of every video track's declared frames. `external_reference`: a description
    of the first data reference to outside the file, or None."""

    frame_sizes: list[tuple[int, int]] = field(default_factory=list)
    external_reference: str | None = None


def read_header_facts(handle: BinaryIO, container: str, size: int) -> HeaderFacts:
    """The facts declared by the headers of an open file of `size` bytes; `container` is "mp4" or "matroska"."""
    if container == "mp4":
        return _read_mp4(handle, size)
    if container == "matroska":
        return _read_matroska(handle, size)
    raise ValueError(f"unknown container {container!r}")


# --- ISO BMFF (MP4, MOV, 3GP) ----------------------------------------------------------------------------------


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, body start, body end) of the boxes in data[start:end]; stops at the first malformed box."""
    found = []
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            if offset + 16 > end:
                break
            (size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            break
        found.append((kind, offset + header, offset + size))
        offset += size
    return found


def _read_mp4(handle: BinaryIO, size: int) -> HeaderFacts:
    offset = 0
    for _ in range(MAX_TOP_LEVEL):
        if offset + 8 > size:
            break
        handle.seek(offset)
        header = handle.read(16)
        if len(header) < 8:
            break
        box_size, kind = struct.unpack_from(">I4s", header)
        header_size = 8
        if box_size == 1 and len(header) == 16:
            (box_size,) = struct.unpack_from(">Q", header, 8)
            header_size = 16
        elif box_size == 0:
            box_size = size - offset
        if box_size < header_size:
            break
        if kind == b"moov":
            # FFmpeg reads the first movie header and skips any later one; so does this.
            body_size = min(box_size, size - offset) - header_size
            if body_size > MAX_MOOV_BYTES:
                return HeaderFacts()  # left to FFmpeg, which refuses or reads it with its own limits
            handle.seek(offset + header_size)
            moov = handle.read(body_size)
            facts = HeaderFacts()
            _walk_moov(moov, 0, len(moov), facts, [0])
            return facts
        offset += box_size
    return HeaderFacts()


def _walk_moov(data: bytes, start: int, end: int, facts: HeaderFacts, visited: list[int]) -> None:
    for kind, body, stop in _boxes(data, start, end):
        visited[0] += 1
        if visited[0] > MAX_NODES:
            return
        if kind == b"trak":
            _walk_track(data, body, stop, facts, visited)
        elif kind in _BOX_CONTAINERS:
            _walk_moov(data, body, stop, facts, visited)
        elif kind == b"dref" and facts.external_reference is None:
            facts.external_reference = _external_reference(data, body, stop)


def _walk_track(data: bytes, start: int, end: int, facts: HeaderFacts, visited: list[int]) -> None:
    """A trak: its data references, and its sample entries' frame sizes when its handler is video ('vide')."""
    entries: list[tuple[int, int]] = []
    handler = b""
    stack = [(start, end)]
    while stack:
        first, last = stack.pop()
        for kind, body, stop in _boxes(data, first, last):
            visited[0] += 1
            if visited[0] > MAX_NODES:
                return
            if kind in _BOX_CONTAINERS:
                stack.append((body, stop))
            elif kind == b"hdlr" and body + 12 <= stop:
                handler = data[body + 8 : body + 12]  # after version/flags and pre_defined
            elif kind == b"dref" and facts.external_reference is None:
                facts.external_reference = _external_reference(data, body, stop)
            elif kind == b"stsd" and body + 8 <= stop:
                entries.extend((entry, entry_end) for _, entry, entry_end in _boxes(data, body + 8, stop))
    if handler == b"vide":
        for entry, entry_end in entries:
            if entry_end - entry >= _VISUAL_ENTRY_SIZE:  # width, height after 6 reserved bytes, the data
                # reference index and 16 bytes of pre-defined/reserved fields
                facts.frame_sizes.append(struct.unpack_from(">HH", data, entry + 24))


def _external_reference(data: bytes, body: int, end: int) -> str | None:
    """The first dref entry that is not self-contained (flag 1 clear), described, or None."""
    if body + 8 > end:
        return None
    for kind, entry, stop in _boxes(data, body + 8, end):  # after version/flags and the entry count
        if entry + 4 > stop:
            return f"{kind.decode('latin-1').strip()} (malformed)"
        flags = int.from_bytes(data[entry + 1 : entry + 4], "big")
        if not flags & 1:
            location = data[entry + 4 : stop].split(b"\x00", 1)[0][:200]
            return f"{kind.decode('latin-1').strip()} {location.decode('latin-1')!r}"
    return None


_VISUAL_ENTRY_SIZE: Final = 78  # a VisualSampleEntry's fixed fields


# --- Matroska, WebM --------------------------------------------------------------------------------------------

_EBML: Final = 0x1A45DFA3
_SEGMENT: Final = 0x18538067
_CLUSTER: Final = 0x1F43B675
_TRACKS: Final = 0x1654AE6B
_TRACK_ENTRY: Final = 0xAE
_VIDEO: Final = 0xE0
_PIXEL_WIDTH: Final = 0xB0
_PIXEL_HEIGHT: Final = 0xBA
_UNKNOWN_SIZE: Final = -1
# A Tracks element lists a few tracks in a few hundred bytes (codec private data included: kilobytes).
MAX_TRACKS_BYTES: Final = 16 * 1024 * 1024


def _vint(data: bytes, offset: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at data[offset]: (value, length), None when malformed. A size with every
    value bit set is 'unknown' (-1)."""
    if offset >= len(data):
        return None
    first = data[offset]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or offset + length > len(data):
        return None
    value = int.from_bytes(data[offset : offset + length], "big")
    if keep_marker:
        return value, length
    value &= (1 << (7 * length)) - 1
    if value == (1 << (7 * length)) - 1:
        return _UNKNOWN_SIZE, length
    return value, length


def _element(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(id, data start, data size) of the element at data[offset]; size -1 when unknown."""
    ident = _vint(data, offset, keep_marker=True)
    if ident is None:
        return None
    size = _vint(data, offset + ident[1], keep_marker=False)
    if size is None:
        return None
    return ident[0], offset + ident[1] + size[1], size[0]


def _read_matroska(handle: BinaryIO, size: int) -> HeaderFacts:
    facts = HeaderFacts()
    handle.seek(0)
    head = handle.read(64)
    ebml = _element(head, 0)
    if ebml is None or ebml[0] != _EBML or ebml[2] < 0:
        return facts
    offset = ebml[1] + ebml[2]
    handle.seek(offset)
    segment = _element(handle.read(16), 0)
    if segment is None or segment[0] != _SEGMENT:
        return facts
    offset += segment[1]
    for _ in range(MAX_TOP_LEVEL):
        if offset >= size:
            break
        handle.seek(offset)
        child = _element(handle.read(16), 0)
        if child is None or child[0] == _CLUSTER or child[2] < 0:
            break  # the tracks come before the first cluster; an unknown-size element cannot be skipped
        ident, data_start, data_size = child
        if ident == _TRACKS:
            if data_size <= MAX_TRACKS_BYTES:
                handle.seek(offset + data_start)
                _read_tracks(handle.read(data_size), facts)
            break
        offset += data_start + data_size
    return facts


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    found: list[tuple[int, int, int]] = []
    offset = start
    while offset < end and len(found) < MAX_NODES:
        element = _element(data, offset)
        if element is None or element[2] < 0 or element[1] + element[2] > end:
            break
        found.append((element[0], element[1], element[1] + element[2]))
        offset = element[1] + element[2]
    return found


def _read_tracks(data: bytes, facts: HeaderFacts) -> None:
    for ident, start, end in _children(data, 0, len(data)):
        if ident != _TRACK_ENTRY:
            continue
        for child, child_start, child_end in _children(data, start, end):
            if child != _VIDEO:
                continue
            sizes = {
                ident: int.from_bytes(data[s:e], "big")
                for ident, s, e in _children(data, child_start, child_end)
                if ident in (_PIXEL_WIDTH, _PIXEL_HEIGHT) and e - s <= 8
            }
            facts.frame_sizes.append((sizes.get(_PIXEL_WIDTH, 0), sizes.get(_PIXEL_HEIGHT, 0)))
