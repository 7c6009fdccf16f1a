"""The media layer: every colour mode becomes 8-bit BGR, transparency kept as alpha."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from inference.media import (
    decode_image,
    encode_image,
)
from tests.inference.media_helpers import (
    BLUE_BGR,
    RED_BGR,
    assert_close,
    gradient_rgb,
    noisy_bgr,
    pil_bytes,
)


def test_grayscale_becomes_bgr() -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    decoded = decode_image(pil_bytes(Image.fromarray(gray), "PNG"))
    assert decoded.alpha is None
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[:, :, channel], gray)


def test_one_bit_becomes_bgr() -> None:
    img = Image.new("1", (8, 8), 0)
    img.putpixel((1, 1), 1)
    decoded = decode_image(pil_bytes(img, "PNG"))
    assert tuple(decoded.pixels[1, 1]) == (255, 255, 255)
    assert tuple(decoded.pixels[0, 0]) == (0, 0, 0)


def test_palette_with_transparency_keeps_alpha() -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, 1 blue
    img.putpixel((0, 0), 0)
    decoded = decode_image(pil_bytes(img, "PNG", transparency=0))
    assert decoded.alpha is not None
    assert decoded.alpha[0, 0] == 0
    assert decoded.alpha[1, 1] == 255
    assert tuple(decoded.pixels[1, 1]) == BLUE_BGR


def test_palette_without_transparency_is_opaque() -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 255, 0])
    decoded = decode_image(pil_bytes(img, "PNG"))
    assert decoded.alpha is None
    assert tuple(decoded.pixels[0, 0]) == (0, 255, 0)


def test_rgb_colour_key_transparency_becomes_alpha() -> None:
    img = Image.new("RGB", (8, 8), (0, 0, 255))
    img.putpixel((0, 0), (255, 0, 0))
    decoded = decode_image(pil_bytes(img, "PNG", transparency=(255, 0, 0)))
    assert decoded.alpha is not None
    assert (decoded.alpha[0, 0], decoded.alpha[1, 1]) == (0, 255)


def test_gray_alpha_keeps_alpha() -> None:
    gray = np.full((8, 8), 100, np.uint8)
    alpha = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    img = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    decoded = decode_image(pil_bytes(img, "PNG"))
    assert decoded.alpha is not None
    np.testing.assert_array_equal(decoded.alpha, alpha)
    assert (decoded.pixels == 100).all()


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_rgba_alpha_survives_decode_and_encode(fmt: str) -> None:
    rgba = np.dstack([gradient_rgb(), np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))])
    decoded = decode_image(pil_bytes(Image.fromarray(rgba), "PNG"))
    assert decoded.alpha is not None
    np.testing.assert_array_equal(decoded.alpha, rgba[:, :, 3])
    again = decode_image(encode_image(decoded.pixels, format=fmt, alpha=decoded.alpha, lossless=True))
    assert again.alpha is not None
    np.testing.assert_array_equal(again.alpha, rgba[:, :, 3])
    np.testing.assert_array_equal(again.pixels, decoded.pixels)  # even under fully transparent pixels


def test_jpeg_drops_alpha() -> None:
    alpha = np.zeros((48, 64), np.uint8)
    decoded = decode_image(encode_image(noisy_bgr(), format="jpeg", alpha=alpha))
    assert decoded.alpha is None


def test_sixteen_bit_gray_scales_down() -> None:
    wide = np.array([[0, 128, 257, 32768, 65280, 65535]], np.uint16)
    ok, data = cv2.imencode(".png", wide)
    assert ok
    decoded = decode_image(data.tobytes())
    assert decoded.alpha is None
    assert decoded.pixels[0, :, 0].tolist() == [0, 0, 1, 128, 254, 255]
    assert (decoded.pixels[:, :, 0] == decoded.pixels[:, :, 2]).all()


def test_sixteen_bit_rgb_scales_down() -> None:
    # Pillow reads a 16-bit RGB PNG as 8-bit RGB (each sample's high byte): 65535 -> 255, never clipped at 255
    wide = np.zeros((2, 3, 3), np.uint16)
    wide[0, 0] = (65535, 32768, 0)  # BGR, as cv2 writes it
    wide[0, 1] = (256, 65535, 4096)
    ok, data = cv2.imencode(".png", wide)
    assert ok
    with Image.open(io.BytesIO(data.tobytes())) as probe:
        assert probe.mode == "RGB"
    decoded = decode_image(data.tobytes())
    assert tuple(decoded.pixels[0, 0]) == (255, 128, 0)
    assert tuple(decoded.pixels[0, 1]) == (1, 255, 16)


def test_sixteen_bit_rgba_keeps_alpha() -> None:
    wide = np.zeros((2, 2, 4), np.uint16)
    wide[..., 2] = 65535  # red
    wide[0, 0, 3] = 65535
    ok, data = cv2.imencode(".png", wide)
    assert ok
    decoded = decode_image(data.tobytes())
    assert decoded.alpha is not None
    assert decoded.alpha.tolist() == [[255, 0], [0, 0]]
    assert tuple(decoded.pixels[0, 0]) == RED_BGR


def test_cmyk_jpeg_becomes_bgr() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    decoded = decode_image(pil_bytes(cmyk, "JPEG", quality=95))
    assert_close(decoded.pixels[8, 8], RED_BGR)


# --- metadata never reaches the output ------------------------------------------------------------------------
