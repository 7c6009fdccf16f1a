"""The engine's typed errors. Each carries a stable `code`, an HTTP-style `status_code` and whether the caller's
input caused it (`input_error`: fail the job and release its hold) or the infrastructure did (retry).

They share the service's error contract (status_code, code, title, detail, extra) without importing it."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    status_code = 500
    code = "engine_error"
    title = "Engine error"
    input_error = False

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


# --- caused by the input (never retried) -------------------------------------------------------------


class InputError(EngineError):
    status_code = 422
    code = "invalid_input"
    title = "Invalid input"
    input_error = True


class InvalidImage(InputError):
    """Corrupt, truncated or undecodable image data."""

    code = "invalid_image"
    title = "Invalid image"


class UnsupportedImageFormat(InputError):
    status_code = 415
    code = "unsupported_image_format"
    title = "Unsupported image format"


class AnimatedImage(InputError):
    code = "animated_image"
    title = "Animated images are not supported"


class ImageTooLarge(InputError):
    """Over the byte limit."""

    status_code = 413
    code = "image_too_large"
    title = "Image too large"


class TooManyPixels(InputError):
    """Over the pixel limit (checked from the header, before decoding: decompression bombs never decode)."""

    status_code = 413
    code = "too_many_pixels"
    title = "Image has too many pixels"


class NoSourceFace(InputError):
    code = "no_source_face"
    title = "No face in the source image"


class NoTargetFace(InputError):
    code = "no_target_face"
    title = "No face in the target image"


class NoReferenceFace(InputError):
    code = "no_reference_face"
    title = "No face in the reference image"


class NoMatchingFace(InputError):
    code = "no_matching_face"
    title = "No target face matches the reference"


class InvalidFaceSelection(InputError):
    code = "invalid_face_selection"
    title = "Invalid face selection"


class InvalidOutputFormat(InputError):
    code = "invalid_output_format"
    title = "Invalid output format"


class InvalidProcessors(InputError):
    """A processors list that is empty, names an unknown processor, repeats one or lacks `face_swapper`."""

    code = "invalid_processors"
    title = "Invalid processors"


# --- videos (refused by the probe before anything is held or decoded) ---------------------------------------


class UnsupportedVideoFormat(InputError):
    """Not MP4/MOV or Matroska/WebM by its content: a playlist, another container, a reference to other data."""

    status_code = 415
    code = "unsupported_video_format"
    title = "Unsupported video format"


class InvalidVideo(InputError):
    """Empty, truncated or undecodable video data."""

    code = "invalid_video"
    title = "Invalid video"


class NoVideoStream(InputError):
    """A container without a video stream (audio only; cover art does not count)."""

    code = "no_video_stream"
    title = "No video stream"


class VideoTooLarge(InputError):
    """Over the byte limit."""

    status_code = 413
    code = "video_too_large"
    title = "Video too large"


class VideoTooLong(InputError):
    code = "video_too_long"
    title = "Video too long"


class VideoTooManyPixels(InputError):
    """A frame size over the per-frame pixel limit (checked from the headers, before any frame is decoded)."""

    status_code = 413
    code = "video_too_many_pixels"
    title = "Video frames have too many pixels"


class VideoFrameRateTooHigh(InputError):
    code = "video_frame_rate_too_high"
    title = "Video frame rate too high"


class VideoTooManyFrames(InputError):
    code = "video_too_many_frames"
    title = "Video has too many frames"


class InvalidTrim(InputError):
    code = "invalid_trim"
    title = "Invalid trim"


# --- caused by the installation or the machine (retryable or fatal at start-up) -------------------------


class ModelNotFound(EngineError):
    code = "model_not_found"
    title = "Model file missing"


class ModelContractError(EngineError):
    """A model file whose inputs/outputs are not the contract the engine was written for."""

    code = "model_contract_mismatch"
    title = "Model does not match its contract"


class ChecksumMismatch(EngineError):
    code = "checksum_mismatch"
    title = "Checksum mismatch"


class DownloadError(EngineError):
    code = "download_failed"
    title = "Download failed"


class ProviderUnavailable(EngineError):
    """An execution provider (GPU) was asked for and is not active."""

    code = "provider_unavailable"
    title = "Execution provider unavailable"


class ProcessorUnavailable(EngineError):
    """A valid processor was asked for whose model this installation does not have (the optional enhancer)."""

    status_code = 503
    code = "processor_unavailable"
    title = "Processor unavailable"
