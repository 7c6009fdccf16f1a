"""Reading a swap upload (multipart/form-data). Called by the endpoint only once the caller is authenticated,
allowed to submit and within its rate limits: FastAPI would otherwise read and spool a form body before any
dependency runs, so the route declares no form parameters and reads the stream here.

Everything is held in memory and bounded: the body limit (`BodyLimitMiddleware`) caps the whole upload while it
streams, each file is refused as soon as it passes `max_image_bytes`, and text fields are a few hundred bytes.
Nothing is written to a temporary file. Only the documented fields are accepted: anything else (a price, units,
a tenant or account) is refused, never silently ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from facemint.errors import BadRequest, UnsupportedMediaType
from facemint.jobs.errors import InvalidSwapRequest
from inference import media
from inference.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat

FILE_FIELDS = ("source", "target", "reference")
MAX_TEXT_FIELD_BYTES = 4096


class InvalidMultipart(BadRequest):
    code = "invalid_multipart"
    title = "Invalid multipart body"


class UnknownFormField(InvalidSwapRequest):
    code = "unknown_field"
    title = "Unknown form field"


class SwapOptions(BaseModel):
    """The text fields of a swap upload, as sent (strings from the form, converted here)."""

    model_config = ConfigDict(extra="forbid")
    faces: Annotated[str, Field(max_length=300, description="largest | all | index:i,j | reference")] = "largest"
    threshold: Annotated[float, Field(ge=0, le=1, description="reference match threshold")] = 0.5
    output_format: Annotated[str, Field(max_length=10, description="png | jpeg | webp")] = "png"
    quality: Annotated[int, Field(ge=1, le=100, description="jpeg and webp quality")] = 90
    webhook_url: Annotated[str | None, Field(max_length=2048, description="where to POST the outcome")] = None


TEXT_FIELDS = tuple(SwapOptions.model_fields)


@dataclass(frozen=True, slots=True)
class SwapUpload:
    options: SwapOptions
    files: dict[str, bytes]  # source, target and (faces=reference) reference: sniffed JPEG, PNG or WebP


def openapi_request_body() -> dict[str, Any]:
    """The form as OpenAPI describes it (the route reads it itself, so FastAPI cannot)."""
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": f"the {name} image (JPEG, PNG or WebP)"}
        for name in FILE_FIELDS
    }
    for name, schema in SwapOptions.model_json_schema()["properties"].items():
        schema = {k: v for k, v in schema.items() if k != "title"}
        if "anyOf" in schema:  # `str | None`: a form field is absent or a string
            schema = {**next(s for s in schema.pop("anyOf") if s.get("type") != "null"), **schema}
            schema.pop("default", None)
        properties[name] = schema
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
                "encoding": {name: {"contentType": "image/png, image/jpeg, image/webp"} for name in FILE_FIELDS},
            }
        },
    }


class _BoundedParser(MultiPartParser):
    """Starlette's parser, kept in memory (no spooling to disk) and stopping a file as soon as it is too large."""

    def __init__(self, request: Request, *, max_file_bytes: int) -> None:
        super().__init__(
            request.headers,
            request.stream(),
            max_files=len(FILE_FIELDS),
            max_fields=len(TEXT_FIELDS),
            max_part_size=MAX_TEXT_FIELD_BYTES,
        )
        self.spool_max_size = max_file_bytes + 1  # never rolls over to a temporary file
        self.max_file_bytes = max_file_bytes
        self._file_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_bytes:
                field = self._current_part.field_name
                raise ImageTooLarge(f"`{field}` is larger than {self.max_file_bytes} bytes", field=field)
        super().on_part_data(data, start, end)


async def read_swap_upload(request: Request, *, max_file_bytes: int) -> SwapUpload:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise UnsupportedMediaType("send the images as multipart/form-data")
    try:
        form = await _BoundedParser(request, max_file_bytes=max_file_bytes).parse()
    except MultiPartException as exc:
        raise InvalidMultipart(exc.message) from exc
    files: dict[str, bytes] = {}
    texts: dict[str, str] = {}
    for name, value in form.multi_items():
        if name in files or name in texts:
            raise UnknownFormField(f"`{name}` is given more than once", field=name)
        if name in FILE_FIELDS:
            if not isinstance(value, UploadFile):
                raise InvalidSwapRequest(f"`{name}` must be a file", field=name)
            files[name] = await value.read()
        elif name in TEXT_FIELDS:
            if not isinstance(value, str):
                raise InvalidSwapRequest(f"`{name}` must be a text field, not a file", field=name)
            texts[name] = value
        else:
            raise UnknownFormField(
                f"unknown field `{name[:100]}`; a swap takes {', '.join(FILE_FIELDS + TEXT_FIELDS)}", field=name[:100]
            )
    try:
        options = SwapOptions.model_validate({k: v for k, v in texts.items() if v != "" or k != "webhook_url"})
    except ValidationError as exc:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        ) from None
    for name in ("source", "target"):
        if name not in files:
            raise InvalidSwapRequest(f"the `{name}` file is required", field=name)
    for name, data in files.items():
        _check_image(name, data)
    return SwapUpload(options=options, files=files)


def _check_image(field: str, data: bytes) -> None:
    if not data:
        raise InvalidImage(f"`{field}` is empty", field=field)
    kind = media.detect_format(data)
    if kind not in ("jpeg", "png", "webp"):
        raise UnsupportedImageFormat(
            f"`{field}` is {'not an image' if kind is None else kind}; send JPEG, PNG or WebP",
            field=field,
            detected=kind,
        )
