"""Files to upload, from a path, bytes or a binary file object, sendable again on every retry: a path is opened
anew for each attempt (a video streams from disk, never into memory), a seekable file object is rewound to where
it stood, and only an unseekable one is read into memory once."""

from __future__ import annotations

import io
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FileInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    content_type: str
    path: Path | None = None
    data: bytes | None = None
    stream: IO[bytes] | None = None
    position: int = 0

    @classmethod
    def of(cls, value: FileInput, *, field: str) -> Upload:
        if isinstance(value, str | os.PathLike):
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(f"{field}: no file at {path}")
            return cls(filename=path.name, content_type=_guess(path.name), path=path)
        if isinstance(value, bytes | bytearray | memoryview):
            return cls(filename=field, content_type="application/octet-stream", data=bytes(value))
        if isinstance(value, io.TextIOBase):
            raise TypeError(f"{field}: open the file in binary mode ('rb')")
        name = os.path.basename(str(getattr(value, "name", "") or "")) or field
        seekable = getattr(value, "seekable", lambda: False)()
        if seekable:
            return cls(filename=name, content_type=_guess(name), stream=value, position=value.tell())
        return cls(filename=name, content_type=_guess(name), data=value.read())

    def open(self) -> tuple[tuple[str, Any, str], IO[bytes] | None]:
        """The httpx file tuple for one attempt, and a handle this attempt opened (to close after it)."""
        if self.path is not None:
            handle = self.path.open("rb")
            return (self.filename, handle, self.content_type), handle
        if self.stream is not None:
            self.stream.seek(self.position)
            return (self.filename, self.stream, self.content_type), None
        return (self.filename, self.data or b"", self.content_type), None

    def read(self) -> bytes:
        """The whole file, for a body sent as it is (a CSV, an image)."""
        (_, body, _), handle = self.open()
        try:
            return body if isinstance(body, bytes) else bytes(body.read())
        finally:
            if handle is not None:
                handle.close()


def _guess(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"
