"""The media layer: safe decoding of untrusted bytes, encoding without metadata. Every fixture is generated here."""

from __future__ import annotations

import io
import resource
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, PngImagePlugin, WebPImagePlugin

from inference import errors
from inference.media import (
    DecodedImage,
    MediaLimits,
    content_type,
    decode_image,
    detect_format,
    encode_image,
)
from tests.inference.media_helpers import (
    RED_BGR,
    assert_close,
    assert_error,
    gradient_rgb,
    jpeg_app_segments,
    noisy_bgr,
    pil_bytes,
    png_chunk,
    png_chunk_types,
    webp_chunk_types,
)


def test_media_limits_defaults() -> None:
    limits = MediaLimits()
    assert limits.max_bytes == 25 * 1024 * 1024
    assert limits.max_pixels == 40_000_000 > 7680 * 4320  # above 8K UHD
    with pytest.raises(ValueError):
        MediaLimits(max_pixels=0)


def test_decoded_image_is_bgr_uint8_contiguous_and_writable() -> None:
    decoded = decode_image(pil_bytes(Image.new("RGB", (64, 48), (255, 0, 0)), "PNG"))
    assert isinstance(decoded, DecodedImage)
    assert (decoded.format, decoded.width, decoded.height) == ("png", 64, 48)
    assert decoded.pixels.shape == (48, 64, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.flags.c_contiguous
    assert decoded.pixels.flags.writeable
    assert decoded.alpha is None
    assert tuple(decoded.pixels[0, 0]) == RED_BGR  # BGR: red is the last channel


def test_format_is_detected_from_content_not_name(tmp_path: Path) -> None:
    misnamed = tmp_path / "holiday.jpg"
    misnamed.write_bytes(pil_bytes(Image.new("RGB", (8, 8)), "PNG"))
    assert decode_image(misnamed.read_bytes()).format == "png"
    jpeg = pil_bytes(Image.new("RGB", (8, 8)), "JPEG")
    assert decode_image(jpeg).format == "jpeg"
    assert decode_image(bytearray(jpeg)).format == "jpeg"
    assert decode_image(memoryview(jpeg)).format == "jpeg"
    assert decode_image(pil_bytes(Image.new("RGB", (8, 8)), "WEBP")).format == "webp"


# --- refusals -------------------------------------------------------------------------------------------------


def test_byte_limit_is_checked_first() -> None:
    with pytest.raises(errors.ImageTooLarge) as exc_info:
        decode_image(b"\0" * 101, limits=MediaLimits(max_bytes=100))  # not even an image: the size decides first
    assert_error(exc_info, "image_too_large", 413)
    assert exc_info.value.extra == {"max_bytes": 100, "size": 101}


def test_empty_input_is_invalid() -> None:
    with pytest.raises(errors.InvalidImage) as exc_info:
        decode_image(b"")
    assert_error(exc_info, "invalid_image", 422)


def _ftyp(*brands: bytes) -> bytes:
    box = b"ftyp" + brands[0] + b"\0\0\0\0" + b"".join(brands)
    return struct.pack(">I", len(box) + 4) + box + b"\0" * 32


UNSUPPORTED: dict[str, Callable[[], bytes]] = {
    "gif": lambda: pil_bytes(Image.new("RGB", (8, 8)), "GIF"),
    "bmp": lambda: pil_bytes(Image.new("RGB", (8, 8)), "BMP"),
    "tiff": lambda: pil_bytes(Image.new("RGB", (8, 8)), "TIFF"),
    "pdf": lambda: pil_bytes(Image.new("RGB", (8, 8)), "PDF"),
    "ico": lambda: pil_bytes(Image.new("RGB", (16, 16)), "ICO"),
    "svg": lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
    "heif": lambda: _ftyp(b"heic", b"mif1"),
    "avif": lambda: _ftyp(b"avif", b"mif1", b"miaf"),
    "html": lambda: b"<!DOCTYPE html><html><body>not an image</body></html>",
    "text": lambda: "just some text, with a caf\u00e9\n".encode(),
}


@pytest.mark.parametrize("found", sorted(UNSUPPORTED))
def test_unsupported_formats_are_named(found: str) -> None:
    data = UNSUPPORTED[found]()
    assert detect_format(data) == found
    with pytest.raises(errors.UnsupportedImageFormat) as exc_info:
        decode_image(data)
    assert_error(exc_info, "unsupported_image_format", 415)
    assert exc_info.value.extra["found"] == found
    assert exc_info.value.extra["supported"] == ["jpeg", "png", "webp"]
    assert found.upper() in exc_info.value.detail


@pytest.mark.parametrize("data", [np.random.default_rng(1).bytes(4096), b"\x89PN", b"\xff\xd8", b"RIFF\0\0\0\0AVI "])
def test_unrecognised_bytes_are_unsupported(data: bytes) -> None:
    with pytest.raises(errors.UnsupportedImageFormat) as exc_info:
        decode_image(data)
    assert_error(exc_info, "unsupported_image_format", 415)


def png_bomb(width: int, height: int) -> bytes:
    """A PNG declaring width x height 1-bit pixels, with a small valid IDAT: 60000x60000 would be 3.6 GB as L."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    rows = zlib.compress(b"\0" * (1 + (width + 7) // 8) * 16)
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    scan = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + frame + scan + b"\0" * 64 + b"\xff\xd9"


def webp_bomb(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x10\0\0\0" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


@pytest.mark.parametrize(
    ("bomb", "size"),
    [(png_bomb, (60000, 60000)), (jpeg_bomb, (65000, 65000)), (webp_bomb, (16384, 16384))],
    ids=["png", "jpeg", "webp"],
)
def test_decompression_bombs_are_refused_from_the_header(
    bomb: Callable[[int, int], bytes], size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pixels were decoded or a canvas allocated for a bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", never)  # allocates the canvas when created
    data = bomb(*size)
    assert len(data) < 1024
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not surface either
        with pytest.raises(errors.TooManyPixels) as exc_info:
            decode_image(data)
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50 * 1024  # KiB on Linux
    assert_error(exc_info, "too_many_pixels", 413)
    width, height = size
    assert exc_info.value.extra == {
        "width": width,
        "height": height,
        "pixels": width * height,
        "max_pixels": 40_000_000,
    }


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_pixel_limit_is_per_call(fmt: str) -> None:
    data = pil_bytes(Image.new("RGB", (100, 100)), fmt)
    with pytest.raises(errors.TooManyPixels):
        decode_image(data, limits=MediaLimits(max_pixels=9_999))
    assert decode_image(data, limits=MediaLimits(max_pixels=10_000)).width == 100


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_pillows_global_limit_is_neither_changed_nor_consulted(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Image.MAX_IMAGE_PIXELS
    data = pil_bytes(Image.new("RGB", (64, 48)), fmt)
    decode_image(data)
    assert original == Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Image.open would raise DecompressionBombError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(data).width == 64


def test_pillows_bomb_error_never_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    # WebP's plugin checks Pillow's global limit itself while reading the header: that refusal is ours too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(errors.TooManyPixels):
        decode_image(pil_bytes(Image.new("RGB", (64, 48)), "WEBP"))


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_are_refused(fmt: str) -> None:
    first, *rest = _frames()
    data = pil_bytes(first, fmt, save_all=True, append_images=rest, duration=100)
    with pytest.raises(errors.AnimatedImage) as exc_info:
        decode_image(data)
    assert_error(exc_info, "animated_image", 422)
    assert exc_info.value.extra["n_frames"] == 3


@pytest.mark.parametrize(("fmt", "params"), [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("WEBP", {"lossless": True})])
def test_truncated_images_are_invalid(fmt: str, params: dict[str, Any]) -> None:
    data = pil_bytes(Image.fromarray(noisy_bgr()), fmt, **params)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(errors.InvalidImage) as exc_info:
        decode_image(data[: len(data) // 2])
    assert_error(exc_info, "invalid_image", 422)
    assert exc_info.value.extra["format"] == fmt.lower()


def test_corrupt_png_checksum_is_invalid() -> None:
    data = bytearray(pil_bytes(Image.new("RGB", (8, 8)), "PNG"))
    data[29] ^= 0xFF  # inside IHDR's CRC
    with pytest.raises(errors.InvalidImage):
        decode_image(bytes(data))


@pytest.mark.parametrize(("fmt", "params"), [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("WEBP", {"lossless": True})])
def test_corrupted_bytes_raise_only_typed_errors(fmt: str, params: dict[str, Any]) -> None:
    data = pil_bytes(Image.fromarray(noisy_bgr(32, 24)), fmt, **params)
    rng = np.random.default_rng(7)
    for position in rng.integers(0, len(data), 60):
        mutated = bytearray(data)
        mutated[position] ^= int(rng.integers(1, 256))
        try:
            decoded = decode_image(bytes(mutated))
        except errors.InputError:
            continue
        assert decoded.pixels.dtype == np.uint8
        assert decoded.pixels.ndim == 3


# --- round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "lossless"), [("png", False), ("webp", True)])
def test_lossless_round_trip_is_exact(fmt: str, lossless: bool) -> None:
    pixels = noisy_bgr()
    decoded = decode_image(encode_image(pixels, format=fmt, lossless=lossless))
    assert decoded.format == fmt
    np.testing.assert_array_equal(decoded.pixels, pixels)


@pytest.mark.parametrize("fmt", ["jpeg", "jpg", "webp"])
def test_lossy_round_trip_is_close(fmt: str) -> None:
    pixels = cv2.cvtColor(gradient_rgb(), cv2.COLOR_RGB2BGR)
    decoded = decode_image(encode_image(pixels, format=fmt, quality=95))
    assert decoded.format == ("jpeg" if fmt == "jpg" else fmt)
    assert np.abs(decoded.pixels.astype(int) - pixels).mean() < 3


def test_encoded_channel_order_is_what_other_decoders_read() -> None:
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:] = RED_BGR
    for fmt in ("png", "jpeg", "webp"):
        with Image.open(io.BytesIO(encode_image(pixels, format=fmt))) as img:
            rgb = np.asarray(img.convert("RGB"))
        assert_close(rgb[4, 4, ::-1], RED_BGR)


def test_pillow_reads_what_decode_returns_in_bgr() -> None:
    rgb = gradient_rgb()
    decoded = decode_image(pil_bytes(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(decoded.pixels, rgb[:, :, ::-1])


# --- orientation and modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("orientation", "red_quadrant"), [(1, "top-left"), (6, "top-right"), (8, "bottom-left")])
def test_exif_orientation_is_applied(orientation: int, red_quadrant: str) -> None:
    stored = Image.new("RGB", (80, 40), (0, 0, 255))  # 80 wide, 40 high; red marks the stored top-left quadrant
    stored.paste((255, 0, 0), (0, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(pil_bytes(stored, "JPEG", exif=exif.tobytes(), quality=95))
    height, width = decoded.pixels.shape[:2]
    assert (width, height) == ((80, 40) if orientation == 1 else (40, 80))
    assert (decoded.width, decoded.height) == (width, height)
    quadrants = {
        "top-left": decoded.pixels[height // 4, width // 4],
        "top-right": decoded.pixels[height // 4, 3 * width // 4],
        "bottom-left": decoded.pixels[3 * height // 4, width // 4],
        "bottom-right": decoded.pixels[3 * height // 4, 3 * width // 4],
    }
    for name, (blue, _green, red) in quadrants.items():
        assert (red > 200 and blue < 50) == (name == red_quadrant), name


def test_multi_picture_jpeg_decodes_its_first_picture() -> None:
    first, second = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    data = pil_bytes(first, "MPO", save_all=True, append_images=[second], quality=95)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.format == "MPO"
        assert getattr(probe, "n_frames", 1) == 2
    decoded = decode_image(data)
    assert decoded.format == "jpeg"
    assert_close(decoded.pixels[8, 8], RED_BGR)


def test_views_are_encoded_as_they_look() -> None:
    pixels = noisy_bgr()
    flipped = pixels[:, ::-1]
    np.testing.assert_array_equal(decode_image(encode_image(flipped, format="png")).pixels, flipped)


def test_unreadable_exif_is_ignored() -> None:
    data = pil_bytes(Image.new("RGB", (16, 8), (0, 255, 0)), "JPEG", exif=b"Exif\0\0garbage-that-is-not-tiff")
    decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (16, 8)


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _tagged_inputs() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0131] = "secret-software"  # Software
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret-comment")
    text.add_itxt("Author", "secret-author")
    img = Image.fromarray(gradient_rgb())
    return {
        "jpeg": pil_bytes(img, "JPEG", exif=exif.tobytes(), icc_profile=_srgb_icc()),
        "png": pil_bytes(img, "PNG", pnginfo=text, exif=exif.tobytes(), icc_profile=_srgb_icc()),
        "webp": pil_bytes(img, "WEBP", exif=exif.tobytes(), icc_profile=_srgb_icc()),
    }


@pytest.mark.parametrize("source", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("output", ["jpeg", "png", "webp"])
def test_output_carries_no_metadata(source: str, output: str) -> None:
    data = _tagged_inputs()[source]
    with Image.open(io.BytesIO(data)) as original:  # the fixture does carry the metadata
        assert "icc_profile" in original.info
        assert original.getexif()
    decoded = decode_image(data)
    encoded = encode_image(decoded.pixels, format=output)
    assert b"secret" not in encoded.lower()
    assert b"Exif" not in encoded
    with Image.open(io.BytesIO(encoded)) as result:
        result.load()
        assert not set(result.info) & {"exif", "icc_profile", "xmp", "Comment", "Author"}
        assert not result.getexif()
    if output == "png":
        assert not set(png_chunk_types(encoded)) & {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP"}
    elif output == "webp":
        assert not set(webp_chunk_types(encoded)) & {b"EXIF", b"ICCP", b"XMP "}
    else:
        assert all(not s.startswith((b"Exif", b"ICC_PROFILE", b"http://ns.adobe")) for s in jpeg_app_segments(encoded))


# --- encoding arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gif", "bmp", "tiff", "", "jpeg2000", "image/png", "heic"])
def test_invalid_output_format(fmt: str) -> None:
    with pytest.raises(errors.InvalidOutputFormat) as exc_info:
        encode_image(noisy_bgr(), format=fmt)
    assert_error(exc_info, "invalid_output_format", 422)
    with pytest.raises(errors.InvalidOutputFormat):
        content_type(fmt)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("quality", [0, 101, -5, 50.5, True])
def test_invalid_quality(fmt: str, quality: Any) -> None:
    with pytest.raises(errors.InvalidOutputFormat) as exc_info:
        encode_image(noisy_bgr(), format=fmt, quality=quality)
    assert_error(exc_info, "invalid_output_format", 422)


def test_quality_is_used_and_bounds_accepted() -> None:
    pixels = noisy_bgr(128, 96)
    low, high = (len(encode_image(pixels, format="jpeg", quality=q)) for q in (1, 100))
    assert low < high


def test_lossless_jpeg_is_refused() -> None:
    with pytest.raises(errors.InvalidOutputFormat):
        encode_image(noisy_bgr(), format="jpeg", lossless=True)


def test_webp_side_limit() -> None:
    with pytest.raises(errors.InvalidOutputFormat) as exc_info:
        encode_image(np.zeros((1, 16384, 3), np.uint8), format="webp")
    assert exc_info.value.extra["max_side"] == 16383


@pytest.mark.parametrize(
    ("pixels", "alpha"),
    [
        (np.zeros((8, 8), np.uint8), None),
        (np.zeros((8, 8, 4), np.uint8), None),
        (np.zeros((8, 8, 3), np.float32), None),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8)),
    ],
)
def test_malformed_arrays_are_programming_errors(pixels: np.ndarray, alpha: np.ndarray | None) -> None:
    with pytest.raises(ValueError):
        encode_image(pixels, format="png", alpha=alpha)


def test_content_types() -> None:
    assert content_type("jpeg") == content_type("jpg") == content_type("JPG") == "image/jpeg"
    assert content_type("png") == "image/png"
    assert content_type("webp") == "image/webp"
    assert decode_image(encode_image(noisy_bgr(), format="JPG")).format == "jpeg"
