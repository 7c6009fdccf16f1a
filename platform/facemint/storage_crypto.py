"""Encryption at rest for stored inputs and results: `EncryptedStorage` wraps any backend (LocalStorage, S3Storage)
so what lands on disk or in the bucket is ciphertext, and every read is authenticated.

The object format is a header, then the plaintext in fixed-size chunks each sealed with AES-256-GCM (the STREAM
construction), so a video is encrypted and decrypted file to file, chunk by chunk, and never sits in memory:

    header:  b"FMENC" | version (1) | key-id length (1) | key id | salt (16) | chunk size (u32) | plaintext size (u64)
    chunk i: AES-256-GCM(object key, nonce = i (u64) | final flag (u32), plaintext[i], associated data = header)

- The object key is HKDF-SHA256(settings key, salt), with a fresh random salt per object, so nonces (a counter)
  never repeat under one key however many objects a settings key seals.
- The final flag in the nonce makes a truncated object (its last chunk missing) fail, and the counter makes
  reordered or swapped chunks fail; the header is associated data of every chunk, so it cannot be edited either.
  Any failure raises `ObjectUnreadable`: a reader never gets wrong plaintext.
- The key id in the header names the settings key that sealed the object: rotation adds a key under a new id and
  points `storage_encryption_key_id` at it; objects sealed under older ids stay readable while their key is listed,
  and `facemint storage rekey` (facemint.storage_rekey) re-seals them under the current one, so the old key can go.
- Chunks sit at fixed offsets, so a range read decrypts only the chunks that cover the range.

`path()` is None (the stored file is ciphertext): the API serves a result through `open_range` (decrypted chunks)
and the worker reads a video through `local_copy` (a decrypted temporary file). Presigned URLs would hand out
ciphertext, so `presigned_url` refuses (and the settings refuse that combination at start-up)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import secrets
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from facemint.storage import ObjectMissing, ObjectRange, RangeNotSatisfiable, RemoteStorage, Storage, StoredObject

MAGIC = b"FMENC"
VERSION = 1
CHUNK_SIZE = 64 * 1024
_TAG = 16
_SALT = 16
_FIXED = struct.Struct(">IQ")  # chunk size, plaintext size
HEADER_MAX = len(MAGIC) + 2 + 255 + _SALT + _FIXED.size
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_INFO = b"facemint storage object v1"
_READ = 1024 * 1024


class ObjectUnreadable(ValueError):
    """A stored object failed authentication (altered, truncated, reordered) or its key is not configured."""


class Keyring:
    """The settings keys by id (32 raw bytes each) and the id new objects are sealed with."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        for key_id, key in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"invalid storage encryption key id {key_id!r}")
            if len(key) != 32:
                raise ValueError(f"storage encryption key {key_id!r} must be 32 bytes (AES-256)")
        if current not in keys:
            raise ValueError(f"the storage encryption key id {current!r} names no configured key")
        self.keys = keys
        self.current = current

    @classmethod
    def from_base64(cls, keys: dict[str, str], current: str) -> Keyring:
        try:
            decoded = {key_id: base64.b64decode(value, validate=True) for key_id, value in keys.items()}
        except ValueError as exc:
            raise ValueError("storage encryption keys must be base64") from exc
        return cls(decoded, current)

    def key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise ObjectUnreadable(f"the object is sealed with key id {key_id!r}, which is not configured") from None


@dataclass(frozen=True, slots=True)
class Header:
    raw: bytes
    key_id: str
    salt: bytes
    chunk_size: int
    size: int  # of the plaintext

    @property
    def chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size))  # an empty object is one empty final chunk

    def chunk_offset(self, index: int) -> int:
        """Where chunk `index` starts in the stored object."""
        return len(self.raw) + index * (self.chunk_size + _TAG)

    @property
    def stored_size(self) -> int:
        return self.chunk_offset(self.chunks - 1) + (self.size - (self.chunks - 1) * self.chunk_size) + _TAG


def _make_header(key_id: str, size: int, chunk_size: int) -> Header:
    salt = secrets.token_bytes(_SALT)
    ident = key_id.encode("ascii")
    raw = MAGIC + bytes([VERSION, len(ident)]) + ident + salt + _FIXED.pack(chunk_size, size)
    return Header(raw=raw, key_id=key_id, salt=salt, chunk_size=chunk_size, size=size)


def parse_header(data: bytes) -> Header:
    """The header at the start of `data` (which may run on into the chunks)."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 2:
        raise ObjectUnreadable("not an encrypted storage object (no header)")
    version, id_length = data[len(MAGIC)], data[len(MAGIC) + 1]
    if version != VERSION:
        raise ObjectUnreadable(f"unknown encrypted object version {version}")
    start = len(MAGIC) + 2
    end = start + id_length + _SALT + _FIXED.size
    if len(data) < end:
        raise ObjectUnreadable("the object's header is truncated")
    key_id = data[start : start + id_length].decode("ascii", "replace")
    salt = data[start + id_length : start + id_length + _SALT]
    chunk_size, size = _FIXED.unpack(data[end - _FIXED.size : end])
    if chunk_size == 0:
        raise ObjectUnreadable("the object's header is invalid")
    return Header(raw=data[:end], key_id=key_id, salt=salt, chunk_size=chunk_size, size=size)


def sealed_key_id(head: bytes) -> str | None:
    """The key id of the object starting with `head` (its first HEADER_MAX bytes, or all of a shorter object);
    None when it has no encryption header (plaintext). ObjectUnreadable for a damaged header."""
    if not head.startswith(MAGIC):
        return None
    return parse_header(head).key_id


def _cipher(key: bytes, header: Header) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=_INFO).derive(key)
    return AESGCM(derived)


def _nonce(index: int, final: bool) -> bytes:
    return struct.pack(">QI", index, 1 if final else 0)


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def encrypt_stream(
    source: Readable, target: BinaryIO, size: int, keyring: Keyring, chunk_size: int = CHUNK_SIZE
) -> None:
    """Seal the `size` bytes read from `source` into `target`, one chunk in memory at a time."""
    header = _make_header(keyring.current, size, chunk_size)
    cipher = _cipher(keyring.key(keyring.current), header)
    target.write(header.raw)
    for index in range(header.chunks):
        final = index == header.chunks - 1
        want = header.size - index * chunk_size if final else chunk_size
        plain = source.read(want)
        if len(plain) != want:
            raise ValueError("the source changed size while it was being encrypted")
        target.write(cipher.encrypt(_nonce(index, final), plain, header.raw))


def encrypt_bytes(data: bytes, keyring: Keyring) -> bytes:
    sealed = bytearray()
    with contextlib.closing(_Sink(sealed)) as sink:
        encrypt_stream(_Source(data), sink, len(data), keyring)  # type: ignore[arg-type]
    return bytes(sealed)


def decrypt_chunks(header: Header, keyring: Keyring, stored: Iterable[bytes], first: int = 0) -> Iterator[bytes]:
    """The plaintext of chunks `first`.. (to the last), from `stored`: the object's bytes from chunk `first` on,
    in pieces of any size. Raises ObjectUnreadable on any tampering, truncation or trailing bytes."""
    cipher = _cipher(keyring.key(header.key_id), header)
    buffer = bytearray()
    pieces = iter(stored)
    for index in range(first, header.chunks):
        final = index == header.chunks - 1
        length = (header.size - index * header.chunk_size if final else header.chunk_size) + _TAG
        while len(buffer) < length:
            piece = next(pieces, None)
            if piece is None:
                raise ObjectUnreadable("the object is truncated")
            buffer += piece
        record = bytes(buffer[:length])
        del buffer[:length]
        try:
            yield cipher.decrypt(_nonce(index, final), record, header.raw)
        except InvalidTag:
            raise ObjectUnreadable(f"chunk {index} of the object fails authentication (altered or wrong key)") from None
    if buffer or next(pieces, None):
        raise ObjectUnreadable("the object has bytes after its final chunk")


def decrypt_bytes(data: bytes, keyring: Keyring) -> bytes:
    header = parse_header(data)
    return b"".join(decrypt_chunks(header, keyring, [data[len(header.raw) :]]))


class _Source:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = memoryview(data), 0

    def read(self, n: int) -> bytes:
        piece = bytes(self.data[self.at : self.at + n])
        self.at += len(piece)
        return piece


class _Sink:
    def __init__(self, buffer: bytearray) -> None:
        self.buffer = buffer

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def close(self) -> None:
        pass


def _file_pieces(handle: BinaryIO, limit: int | None = None) -> Iterator[bytes]:
    """The file's bytes from where it stands, `limit` of them at most (None: to the end)."""
    left = limit
    while left is None or left > 0:
        piece = handle.read(_READ if left is None else min(_READ, left))
        if not piece:
            return
        if left is not None:
            left -= len(piece)
        yield piece


_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _plain_range(byte_range: str | None, size: int) -> tuple[int, int, bool]:
    """First and last byte (inclusive) of the one range asked for, and whether it is partial; what S3 would answer
    for the same header (a malformed one gets the whole object)."""
    match = _SINGLE_RANGE.fullmatch(byte_range or "")
    if match is None or match.group(1) == match.group(2) == "":
        return 0, size - 1, False
    start_text, end_text = match.groups()
    if start_text == "":  # the last N bytes
        suffix = int(end_text)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1, True
    start = int(start_text)
    if start >= size:
        raise RangeNotSatisfiable(size)
    end = min(size - 1, int(end_text)) if end_text else size - 1
    if end < start:
        return 0, size - 1, False
    return start, end, True


class EncryptedStorage:
    """A backend decorator: objects are sealed on the way in and opened (authenticated) on the way out.

    `read_plaintext`: an object without a header (stored before encryption was turned on) is read as it is, so
    the service keeps serving it while `facemint storage rekey` seals it; off, such an object is refused, so
    nobody who can write to the storage can slip in content the service would serve."""

    def __init__(self, inner: Storage, keyring: Keyring, *, read_plaintext: bool = False) -> None:
        self.inner = inner
        self.keyring = keyring
        self.read_plaintext = read_plaintext

    def _is_plaintext(self, head: bytes) -> bool:
        """Whether the object starting with `head` is to be read as plaintext; refused when it may not be."""
        if head.startswith(MAGIC):
            return False
        if self.read_plaintext:
            return True
        raise ObjectUnreadable(
            "not an encrypted storage object (no header): stored before encryption was turned on? Set "
            "FACEMINT_STORAGE_ENCRYPTION_READ_PLAINTEXT while `facemint storage rekey` seals it"
        )

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.inner.put(key, encrypt_bytes(data, self.keyring), durable=durable)

    def staging_path(self, key: str) -> Path:
        # The plaintext stages where the backend stages (local disk), as briefly as before: put_file seals it and
        # removes it. Encrypting it there too would cost a second pass over every upload for little gain.
        return self.inner.staging_path(key)

    def put_file(self, key: str, source: Path, *, durable: bool = True) -> None:
        sealed = self.inner.staging_path(f"{key}.sealed")
        try:
            with source.open("rb") as plain, sealed.open("wb") as out:
                encrypt_stream(plain, out, os.fstat(plain.fileno()).st_size, self.keyring)
            self.inner.put_file(key, sealed, durable=durable)
        finally:
            sealed.unlink(missing_ok=True)
        source.unlink(missing_ok=True)  # as the backends do: the staged file is consumed

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        if self._is_plaintext(data[: len(MAGIC)]):
            return data
        return decrypt_bytes(data, self.keyring)

    def path(self, key: str) -> Path | None:
        return None  # the stored file is ciphertext: read through open_range or local_copy

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """The decrypted object as a temporary file while the block runs (a video the decoder seeks in)."""
        target = self.inner.staging_path(f"{key}.{secrets.token_hex(6)}.plain")  # unique: two readers may overlap
        try:
            with self.inner.local_copy(key) as stored:
                with stored.open("rb") as handle:
                    head = handle.read(HEADER_MAX)
                    plaintext = self._is_plaintext(head)
                    if not plaintext:
                        header = parse_header(head)
                        handle.seek(len(header.raw))
                        with target.open("wb") as out:
                            for plain in decrypt_chunks(header, self.keyring, _file_pieces(handle)):
                                out.write(plain)
                if plaintext:
                    yield stored  # already a local file of the plaintext
                    return
            yield target
        finally:
            target.unlink(missing_ok=True)

    def _stored(self, key: str, first: int, byte_range: str | None = None) -> ObjectRange:
        """The stored bytes from offset `first` to the end (or the one range `byte_range` asks for)."""
        if isinstance(self.inner, RemoteStorage):
            try:
                return self.inner.open_range(key, byte_range or f"bytes={first}-")
            except RangeNotSatisfiable:
                if byte_range:
                    raise
                raise ObjectUnreadable("the object is truncated") from None
        stored = self.inner.path(key)
        if stored is None:
            raise ObjectMissing(key)
        handle = stored.open("rb")
        size = os.fstat(handle.fileno()).st_size
        try:
            start, last, partial = _plain_range(byte_range, size) if byte_range else (first, size - 1, False)
        except RangeNotSatisfiable:
            handle.close()
            raise
        handle.seek(start)
        chunks = _file_pieces(handle, last + 1 - start)
        return ObjectRange(chunks=chunks, first=start, last=last, size=size, partial=partial, close=handle.close)

    def _header(self, key: str) -> Header | None:
        """The object's header; None for a plaintext object that may be read as it is."""
        data = bytearray()
        try:
            read = self._stored(key, 0, f"bytes=0-{HEADER_MAX - 1}")  # the header's bytes, not the object's
        except RangeNotSatisfiable:
            pass  # an empty object: no header
        else:
            try:
                for piece in read.chunks:
                    data += piece
            finally:
                read.close()
        if self._is_plaintext(bytes(data[: len(MAGIC)])):
            return None
        return parse_header(bytes(data))

    def open_range(self, key: str, byte_range: str | None = None) -> ObjectRange:
        """The plaintext, or the one range asked for (as S3Storage.open_range), decrypting only the chunks that
        cover it: a player's seek into a long video costs a chunk or two, not the whole object.

        The header and the chunks are two reads: an object re-sealed in between (`facemint storage rekey`
        replaces it whole) fails its first chunk, so that read starts again once, from the new header."""
        for attempt in (1, 2):
            header = self._header(key)
            if header is None:
                return self._stored(key, 0, byte_range)
            try:
                return self._open_sealed_range(key, header, byte_range)
            except ObjectUnreadable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _open_sealed_range(self, key: str, header: Header, byte_range: str | None) -> ObjectRange:
        if header.size == 0:
            if byte_range and _SINGLE_RANGE.fullmatch(byte_range):
                raise RangeNotSatisfiable(0)
            read = self._stored(key, len(header.raw))
            try:
                list(decrypt_chunks(header, self.keyring, read.chunks))  # authenticate even an empty object
            finally:
                read.close()
            return ObjectRange(chunks=iter(()), first=0, last=-1, size=0, partial=False, close=lambda: None)
        first, last, partial = _plain_range(byte_range, header.size)
        first_chunk = first // header.chunk_size
        read = self._stored(key, header.chunk_offset(first_chunk))
        decrypted = decrypt_chunks(header, self.keyring, read.chunks, first_chunk)
        try:
            opening = next(decrypted)  # authenticated before the caller commits to a response
        except BaseException:
            read.close()
            raise

        def plaintext() -> Iterator[bytes]:
            at = first_chunk * header.chunk_size
            for plain in itertools.chain([opening], decrypted):
                piece = plain[max(0, first - at) : last + 1 - at]
                if piece:
                    yield piece
                at += len(plain)
                if at > last:
                    return

        return ObjectRange(
            chunks=plaintext(), first=first, last=last, size=header.size, partial=partial, close=read.close
        )

    def presigned_url(self, key: str, ttl_seconds: int, *, filename: str | None = None) -> str:
        raise ValueError("presigned URLs would hand out ciphertext: encrypted storage streams results instead")

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        return self.inner.list(prefix)

    def clear_stale_staging(self, older_than: float) -> int:
        return self.inner.clear_stale_staging(older_than)


def stored_form(storage: Storage) -> tuple[Storage, EncryptedStorage | None]:
    """The backend that holds the bytes as stored, and the encrypting layer over it (None: not encrypted)."""
    if isinstance(storage, EncryptedStorage):
        return storage.inner, storage
    return storage, None
