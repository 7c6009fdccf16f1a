"""Helpers shared by the media tests: fixture builders and assertions."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from inference import errors

RED_BGR = (0, 0, 255)
BLUE_BGR = (255, 0, 0)

# --- fixtures --------------------------------------------------------------------------------------------------


def pil_bytes(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient_rgb(width: int = 64, height: int = 48) -> np.ndarray:
    """A smooth RGB test card (JPEG-friendly), as an RGB array."""
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)]).astype(
        np.uint8
    )


def noisy_bgr(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_chunk_types(data: bytes) -> list[bytes]:
    types, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        types.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def webp_chunk_types(data: bytes) -> list[bytes]:
    types, offset = [], 12
    while offset + 8 <= len(data):
        (length,) = struct.unpack("<I", data[offset + 4 : offset + 8])
        types.append(data[offset : offset + 4])
        offset += 8 + length + (length & 1)
    return types


def jpeg_app_segments(data: bytes) -> list[bytes]:
    """The first bytes of each APPn/COM segment's payload (before the scan data)."""
    segments, offset = [], 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            segments.append(data[offset + 4 : offset + 4 + 14])
        if marker == 0xDA:
            break
        offset += 2 + length
    return segments


def assert_close(pixel: np.ndarray, expected: tuple[int, int, int], tolerance: int = 15) -> None:
    assert np.abs(pixel.astype(int) - expected).max() <= tolerance, (pixel.tolist(), expected)


def assert_error(exc_info: pytest.ExceptionInfo[errors.EngineError], code: str, status: int) -> None:
    assert exc_info.value.code == code
    assert exc_info.value.status_code == status
    assert exc_info.value.input_error


# --- the contract of a decoded image ---------------------------------------------------------------------------
