"""Reading a swap upload (multipart/form-data). Called by the endpoint only once the caller is authenticated,
allowed to submit and within its rate limits: FastAPI would otherwise read and spool a form body before any
dependency runs, so the route declares no form parameters and reads the stream here.

Everything is bounded while it streams: the body limit (`BodyLimitMiddleware`) caps the whole upload, text fields
are a few hundred bytes, and each file is refused as soon as it passes its own limit. Images are held in memory
(`max_image_bytes` each). A video target, recognised by its first bytes (MP4/MOV or Matroska/WebM), is written
as it arrives to a file the storage gives (`Storage.staging_path`), never held in memory, and refused as soon as
it passes `max_video_bytes`; it is hashed on the way. Only the documented fields are accepted: anything else (a
price, units, a tenant or account) is refused, never silently ignored."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from facemint.errors import BadRequest, UnsupportedMediaType
from facemint.jobs.errors import InvalidSwapRequest
from facemint.jobs.submission import VIDEO_FIELD, StagedVideo
from inference import media
from inference.errors import (
    ImageTooLarge,
    InvalidImage,
    InvalidVideo,
    UnsupportedImageFormat,
    UnsupportedVideoFormat,
    VideoTooLarge,
)
from inference.video import detect_video_container

FILE_FIELDS = ("source", "target", "reference")
MAX_TEXT_FIELD_BYTES = 4096
# Enough of a file's start to tell its kind (an ISO BMFF `ftyp` box lists its brands in the first bytes).
_SNIFF_BYTES = 256
# A video is written in pieces of about this size, each on a worker thread (the event loop never waits on disk).
_WRITE_BYTES = 1024 * 1024


class InvalidMultipart(BadRequest):
    code = "invalid_multipart"
    title = "Invalid multipart body"


class UploadInterrupted(BadRequest):
    """The client went away before its upload ended (nobody reads the answer; it keeps the logs to a 400)."""

    code = "upload_interrupted"
    title = "Upload interrupted"


class UnknownFormField(InvalidSwapRequest):
    code = "unknown_field"
    title = "Unknown form field"


class SwapOptions(BaseModel):
    """The text fields of a swap upload, as sent (strings from the form, converted here)."""

    model_config = ConfigDict(extra="forbid")
    faces: Annotated[str, Field(max_length=300, description="largest | all | index:i,j | reference")] = "largest"
    threshold: Annotated[float, Field(ge=0, le=1, description="reference match threshold")] = 0.5
    output_format: Annotated[
        str | None,
        Field(max_length=10, description="images: png (the default) | jpeg | webp; videos: mp4 (the only one)"),
    ] = None
    quality: Annotated[int, Field(ge=1, le=100, description="jpeg and webp quality")] = 90
    webhook_url: Annotated[str | None, Field(max_length=2048, description="where to POST the outcome")] = None
    processors: Annotated[
        str, Field(max_length=200, description="comma-separated: face_swapper, optionally face_enhancer")
    ] = "face_swapper"
    trim_start: Annotated[
        float | None,
        Field(ge=0, le=86400, allow_inf_nan=False, description="videos only: seconds from the start to begin at"),
    ] = None
    trim_end: Annotated[
        float | None,
        Field(gt=0, le=86400, allow_inf_nan=False, description="videos only: seconds from the start to end at"),
    ] = None
    crf: Annotated[
        int | None, Field(ge=0, le=51, description="videos only: H.264 CRF of the result (lower is better)")
    ] = None
    progress_webhooks: Annotated[
        bool, Field(description="videos only, with webhook_url: also POST `job.progress` every 10 %")
    ] = False


TEXT_FIELDS = tuple(SwapOptions.model_fields)
# Optional fields an empty value leaves unset (an HTML form sends every field, empty or not).
_UNSET_WHEN_EMPTY = frozenset(name for name, field in SwapOptions.model_fields.items() if field.default is None)


@dataclass(frozen=True, slots=True)
class SwapUpload:
    options: SwapOptions
    files: dict[str, bytes]  # the images: source, target (unless a video) and reference, sniffed JPEG, PNG or WebP
    video: StagedVideo | None = None  # the target, when it is a video


def openapi_request_body() -> dict[str, Any]:
    """The form as OpenAPI describes it (the route reads it itself, so FastAPI cannot)."""
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": f"the {name} image (JPEG, PNG or WebP)"}
        for name in FILE_FIELDS
    }
    properties[VIDEO_FIELD]["description"] = (
        "the target image (JPEG, PNG or WebP) or video (MP4, MOV, WebM or MKV, recognised by its content)"
    )
    for name, schema in SwapOptions.model_json_schema()["properties"].items():
        schema = {k: v for k, v in schema.items() if k != "title"}
        if "anyOf" in schema:  # `X | None`: a form field is absent or an X
            schema = {**next(s for s in schema.pop("anyOf") if s.get("type") != "null"), **schema}
            schema.pop("default", None)
        properties[name] = schema
    image_types = "image/png, image/jpeg, image/webp"
    video_types = "video/mp4, video/quicktime, video/webm, video/x-matroska"
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": ["source", "target"],
                    "additionalProperties": False,
                },
                "encoding": {
                    name: {"contentType": f"{image_types}, {video_types}" if name == VIDEO_FIELD else image_types}
                    for name in FILE_FIELDS
                },
            }
        },
    }


class _VideoSink:
    """Where a video part goes as it streams: a file, written and hashed in pieces on a worker thread."""

    def __init__(self, path: Path, container: str) -> None:
        self.path = path
        self.container = container
        self.size = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None

    def add(self, data: bytes) -> None:
        self.size += len(data)
        self.pending.append(data)
        self.pending_bytes += len(data)

    def _write(self, pieces: list[bytes]) -> None:
        if self._file is None:
            self._file = self.path.open("xb")
        for piece in pieces:
            self._file.write(piece)
            self._hash.update(piece)

    async def flush(self, *, final: bool = False) -> None:
        if self.pending_bytes < _WRITE_BYTES and not final:
            return
        pieces, self.pending, self.pending_bytes = self.pending, [], 0
        await anyio.to_thread.run_sync(self._write, pieces)
        if final:
            await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        if self._file is None:
            self._file = self.path.open("xb")
        self._file.close()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def staged(self) -> StagedVideo:
        return StagedVideo(
            path=self.path, container=self.container, size_bytes=self.size, sha256=self._hash.hexdigest()
        )


class _SwapFormReader:
    """python-multipart's callbacks for a swap form: each part checked as it starts (a known field, once, a file
    where a file belongs) and bounded as it streams."""

    def __init__(self, *, max_image_bytes: int, max_video_bytes: int, stage: Callable[[], Path]) -> None:
        self.max_image_bytes = max_image_bytes
        self.max_video_bytes = max_video_bytes
        self.stage = stage
        self.texts: dict[str, str] = {}
        self.images: dict[str, bytes] = {}
        self.video: _VideoSink | None = None
        self.video_complete = False
        self.declared_video = False  # the target's part said video/* but its content is not a video we know
        self._seen: set[str] = set()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._content_type = b""
        self._field = ""
        self._is_file = False
        self._kind: str | None = None  # "image" | "video" once known; None while a target's first bytes arrive
        self._data = bytearray()

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._content_type = b""
        self._data = bytearray()
        self._kind = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        elif self._header_name.lower() == b"content-type":
            self._content_type = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidMultipart('every part needs a Content-Disposition header with a "name"')
        name = options[b"name"].decode("utf-8", errors="replace")
        self._is_file = b"filename" in options
        if name in self._seen:
            raise UnknownFormField(f"`{name}` is given more than once", field=name)
        if name in FILE_FIELDS:
            if not self._is_file:
                raise InvalidSwapRequest(f"`{name}` must be a file", field=name)
            self._kind = None if name == VIDEO_FIELD else "image"
        elif name in TEXT_FIELDS:
            if self._is_file:
                raise InvalidSwapRequest(f"`{name}` must be a text field, not a file", field=name)
        else:
            raise UnknownFormField(
                f"unknown field `{name[:100]}`; a swap takes {', '.join(FILE_FIELDS + TEXT_FIELDS)}", field=name[:100]
            )
        self._seen.add(name)
        self._field = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if not self._is_file:
            if len(self._data) + len(piece) > MAX_TEXT_FIELD_BYTES:
                raise InvalidMultipart(f"`{self._field}` is longer than {MAX_TEXT_FIELD_BYTES} bytes")
            self._data += piece
        elif self._kind == "video":
            assert self.video is not None
            if self.video.size + len(piece) > self.max_video_bytes:
                raise VideoTooLarge(f"`{self._field}` is larger than {self.max_video_bytes} bytes", field=self._field)
            self.video.add(piece)
        else:
            if len(self._data) + len(piece) > self.max_image_bytes and self._kind == "image":
                raise ImageTooLarge(f"`{self._field}` is larger than {self.max_image_bytes} bytes", field=self._field)
            self._data += piece
            if self._kind is None and len(self._data) >= _SNIFF_BYTES:
                self._decide()

    def _decide(self) -> None:
        """A target's kind from its first bytes: a video goes to a file from here on; anything else is an image."""
        container = detect_video_container(bytes(self._data[:_SNIFF_BYTES]))
        if container is None:
            self._kind = "image"
            if len(self._data) > self.max_image_bytes:
                raise ImageTooLarge(f"`{self._field}` is larger than {self.max_image_bytes} bytes", field=self._field)
            return
        self._kind = "video"
        self.video = _VideoSink(self.stage(), container)
        head, self._data = bytes(self._data), bytearray()
        if len(head) > self.max_video_bytes:
            raise VideoTooLarge(f"`{self._field}` is larger than {self.max_video_bytes} bytes", field=self._field)
        self.video.add(head)

    def on_part_end(self) -> None:
        if not self._is_file:
            self.texts[self._field] = self._data.decode("utf-8", errors="replace")
            return
        if self._kind is None:
            self._decide()
        if self._kind == "image":
            self.images[self._field] = bytes(self._data)
            if self._field == VIDEO_FIELD and self._content_type.strip().lower().startswith(b"video/"):
                self.declared_video = True
        else:
            self.video_complete = True
        self._data = bytearray()


async def read_swap_upload(
    request: Request, *, max_image_bytes: int, max_video_bytes: int, stage: Callable[[], Path]
) -> SwapUpload:
    """The checked form. `stage()` names the file a video target is written to; on any error here that file is
    removed again. On success the caller owns it (`SwapUpload.video.path`)."""
    content_type = request.headers.get("content-type", "")
    media_type, params = parse_options_header(content_type)
    if media_type.lower() != b"multipart/form-data":
        raise UnsupportedMediaType("send the files as multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidMultipart("missing boundary in multipart")
    reader = _SwapFormReader(max_image_bytes=max_image_bytes, max_video_bytes=max_video_bytes, stage=stage)
    try:
        await _parse(reader, boundary, request.stream())
        return _checked(reader)
    except BaseException:
        if reader.video is not None:  # here, not on a thread: this may be a cancellation (the client left)
            reader.video.discard()
        raise


async def _parse(reader: _SwapFormReader, boundary: bytes, stream: AsyncIterator[bytes]) -> None:
    callbacks: Any = {
        "on_part_begin": reader.on_part_begin,
        "on_part_data": reader.on_part_data,
        "on_part_end": reader.on_part_end,
        "on_header_field": reader.on_header_field,
        "on_header_value": reader.on_header_value,
        "on_header_end": reader.on_header_end,
        "on_headers_finished": reader.on_headers_finished,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in stream:
            parser.write(chunk)
            if reader.video is not None:
                await reader.video.flush()
        parser.finalize()
    except FormParserError as exc:
        raise InvalidMultipart("invalid multipart data") from exc
    except ClientDisconnect as exc:
        raise UploadInterrupted("the connection closed before the upload ended") from exc
    if reader.video is not None:
        await reader.video.flush(final=True)


def _checked(reader: _SwapFormReader) -> SwapUpload:
    texts = {k: v for k, v in reader.texts.items() if v != "" or k not in _UNSET_WHEN_EMPTY}
    try:
        options = SwapOptions.model_validate(texts)
    except ValidationError as exc:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        ) from None
    if "source" not in reader.images:
        raise InvalidSwapRequest("the `source` file is required", field="source")
    if VIDEO_FIELD not in reader.images and reader.video is None:
        raise InvalidSwapRequest(f"the `{VIDEO_FIELD}` file is required", field=VIDEO_FIELD)
    if reader.video is not None and not reader.video_complete:
        raise InvalidMultipart(f"the body ended inside the `{VIDEO_FIELD}` part")
    for name, data in reader.images.items():
        _check_image(name, data, declared_video=name == VIDEO_FIELD and reader.declared_video)
    video = reader.video.staged() if reader.video is not None else None
    return SwapUpload(options=options, files=reader.images, video=video)


def _is_manifest(data: bytes) -> bool:
    """An HLS playlist or a DASH manifest: text that names other media (which is never fetched)."""
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"#EXTM3U") or b"<MPD" in head


def _check_image(field: str, data: bytes, *, declared_video: bool = False) -> None:
    """An image file as sent; a target that is not one is answered in a video's terms when it looks like (or was
    sent as) a video: a playlist or manifest, an ISO BMFF file of no known kind, a part typed video/*."""
    if not data:
        if declared_video:
            raise InvalidVideo(f"`{field}` is empty", field=field)
        raise InvalidImage(f"`{field}` is empty", field=field)
    kind = media.detect_format(data)
    if kind in ("jpeg", "png", "webp"):
        return
    if field == VIDEO_FIELD and (_is_manifest(data) or kind == "video" or declared_video):
        if _is_manifest(data):
            what = "a playlist or manifest (what it names is never fetched)"
        else:
            what = f"not a video in a supported container ({kind or 'unrecognised content'})"
        raise UnsupportedVideoFormat(f"`{field}` is {what}: upload an MP4, MOV, WebM or MKV file", field=field)
    if field != VIDEO_FIELD and (kind == "video" or detect_video_container(data[:_SNIFF_BYTES]) is not None):
        raise UnsupportedImageFormat(f"`{field}` is a video: only the `{VIDEO_FIELD}` may be one", field=field)
    accepted = "JPEG, PNG or WebP" + (", or a video (MP4, MOV, WebM or MKV)" if field == VIDEO_FIELD else "")
    raise UnsupportedImageFormat(
        f"`{field}` is {'not an image' if kind is None else kind}; send {accepted}", field=field, detected=kind
    )
