"""Log output: `log_format` "text" (the plain lines, unchanged) or "json" (one object per line, for a log pipeline).

In JSON every line also names what it was logged for: the request (`request_id`, and once its caller is
authenticated `tenant_id`, `user_id`, `api_key_id`) or the job (`job_id`, `attempt`, `tenant_id`, `user_id`).
Those fields live in a context variable holding one mutable dict per request or job: FastAPI runs sync
dependencies (authentication among them) in a thread pool on a *copy* of the context, so a variable set there
would not be seen by the request's later lines; a field added to the shared dict is. Threads started with a copy
of the context (the worker's heartbeat, the video pipeline's decoder and encoder) see the same dict.

While tracing is on (facemint.tracing), each line also carries the current span's `trace_id` and `span_id`."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_fields: ContextVar[dict[str, Any] | None] = ContextVar("facemint_log_fields", default=None)
# Fields computed as each line is emitted, on the thread that logs it: the current trace's ids while tracing is
# on (facemint.tracing installs it); None otherwise, so lines cost nothing more.
_extra_fields: Callable[[], dict[str, Any]] | None = None


@contextlib.contextmanager
def log_scope(**fields: Any) -> Iterator[dict[str, Any]]:
    """A new set of fields for the lines logged inside (a request, a job); the previous set comes back after."""
    current = {name: value for name, value in fields.items() if value is not None}
    token = _fields.set(current)
    try:
        yield current
    finally:
        _fields.reset(token)


def bind(**fields: Any) -> None:
    """Adds fields to the current request's or job's lines (nothing outside one)."""
    current = _fields.get()
    if current is not None:
        current.update({name: value for name, value in fields.items() if value is not None})


def current_fields() -> dict[str, Any]:
    return dict(_fields.get() or {})


def set_extra_fields(source: Callable[[], dict[str, Any]] | None) -> None:
    global _extra_fields
    _extra_fields = source


class ContextFilter(logging.Filter):
    """Stamps the current request's or job's fields on each record as it is emitted (in the thread that logs it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current_fields()
        if _extra_fields is not None:
            fields.update(_extra_fields())
        record.log_fields = fields
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger, message, exception when present, and the
    fields `ContextFilter` stamped."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # The context never overwrites the line's own keys.
        for name, value in getattr(record, "log_fields", {}).items():
            line.setdefault(name, value)
        return json.dumps(line, default=str, ensure_ascii=False)


def json_handler(stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    return handler


def configure(log_format: LogFormat, *, level: int = logging.INFO) -> None:
    """The root logger's output for a process that sets up its own logging (the worker)."""
    if log_format == "json":
        # force: a handler some import installed first would otherwise keep the lines in text.
        logging.basicConfig(level=level, handlers=[json_handler()], force=True)
    else:
        logging.basicConfig(level=level, format=TEXT_FORMAT)


def uvicorn_config(config: dict[str, Any], log_format: LogFormat) -> dict[str, Any]:
    """uvicorn's dictConfig, in JSON when asked: its own loggers' formatters, and a root handler so the
    application's loggers (which uvicorn leaves to Python's last-resort handler) come out the same way."""
    if log_format != "json":
        return config
    config.setdefault("filters", {})["log_fields"] = {"()": f"{__name__}.ContextFilter"}
    for name in ("default", "access"):
        config["formatters"][name] = {"()": f"{__name__}.JsonFormatter"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "log_fields"]
    config["handlers"]["root"] = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["log_fields"],
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["root"], "level": "INFO"}
    return config
