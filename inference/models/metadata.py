"""Read an ONNX file's top-level metadata without loading its graph.

`onnx.load` parses the whole protobuf, which for the real `inswapper_128.onnx` means about half a gigabyte of
memory and seconds of work just to read a few strings. The ONNX `ModelProto` wire format is simple enough to walk
at the top level: every field is a tag (varint) followed by its value, and length-delimited fields (the graph
among them) can be skipped with a seek. Only `doc_string` (field 6) and `metadata_props` (field 14, repeated
`StringStringEntryProto {key = 1; value = 2}`) are decoded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

_DOC_STRING = 6
_METADATA_PROPS = 14
_WIRE_VARINT = 0
_WIRE_I64 = 1
_WIRE_LEN = 2
_WIRE_I32 = 5
# An entry of metadata_props larger than this is not a plausible key/value pair; refuse rather than read it.
_MAX_ENTRY_BYTES = 1 << 20


class NotAnOnnxModel(ValueError):
    """The file is not a well-formed ONNX ModelProto at the top level."""


@dataclass(frozen=True)
class ModelMetadata:
    doc_string: str = ""
    properties: dict[str, str] = field(default_factory=dict)


def _read_varint(stream: BinaryIO) -> int | None:
    """The next varint, or None at a clean end of file."""
    result = 0
    shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise NotAnOnnxModel("truncated varint")
        value = byte[0]
        result |= (value & 0x7F) << shift
        if not value & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise NotAnOnnxModel("varint too long")


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise NotAnOnnxModel("truncated varint in entry")
        value = data[pos]
        pos += 1
        result |= (value & 0x7F) << shift
        if not value & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise NotAnOnnxModel("varint too long")


def _decode_entry(data: bytes) -> tuple[str, str]:
    key = ""
    value = ""
    pos = 0
    while pos < len(data):
        tag, pos = _decode_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _WIRE_LEN:
            length, pos = _decode_varint(data, pos)
            chunk = data[pos : pos + length]
            if len(chunk) != length:
                raise NotAnOnnxModel("truncated metadata entry")
            pos += length
            if number == 1:
                key = chunk.decode("utf-8", errors="replace")
            elif number == 2:
                value = chunk.decode("utf-8", errors="replace")
        elif wire == _WIRE_VARINT:
            _, pos = _decode_varint(data, pos)
        elif wire in (_WIRE_I64, _WIRE_I32):
            pos += 8 if wire == _WIRE_I64 else 4
        else:
            raise NotAnOnnxModel(f"unsupported wire type {wire} in metadata entry")
    return key, value


def read_model_metadata(path: Path | str) -> ModelMetadata:
    """`doc_string` and `metadata_props` of the ONNX model at `path`, skipping the graph.

    Raises OSError when the file cannot be read and NotAnOnnxModel when it is not a ModelProto."""
    doc_string = ""
    properties: dict[str, str] = {}
    with open(path, "rb") as stream:
        size = stream.seek(0, 2)
        stream.seek(0)
        seen_any = False
        while True:
            tag = _read_varint(stream)
            if tag is None:
                break
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise NotAnOnnxModel("field number 0")
            seen_any = True
            if wire == _WIRE_VARINT:
                if _read_varint(stream) is None:
                    raise NotAnOnnxModel("truncated field")
            elif wire in (_WIRE_I64, _WIRE_I32):
                stream.seek(8 if wire == _WIRE_I64 else 4, 1)
            elif wire == _WIRE_LEN:
                length = _read_varint(stream)
                if length is None or stream.tell() + length > size:
                    raise NotAnOnnxModel("length-delimited field runs past the end of the file")
                if number in (_DOC_STRING, _METADATA_PROPS):
                    if length > _MAX_ENTRY_BYTES:
                        raise NotAnOnnxModel("metadata field too large")
                    data = stream.read(length)
                    if number == _DOC_STRING:
                        doc_string = data.decode("utf-8", errors="replace")
                    else:
                        key, value = _decode_entry(data)
                        properties[key] = value
                else:
                    stream.seek(length, 1)
            else:
                raise NotAnOnnxModel(f"unsupported wire type {wire} at top level")
            if stream.tell() > size:
                raise NotAnOnnxModel("field runs past the end of the file")
        if not seen_any:
            raise NotAnOnnxModel("empty file")
    return ModelMetadata(doc_string=doc_string, properties=properties)
