"""Key rotation for encrypted storage (`facemint storage rekey`): every stored object not sealed under the
current key id (facemint.storage_crypto) is sealed again under it, plaintext objects from before encryption was
turned on included, so an old key can leave the settings once nothing needs it.

- Streamed: an object is read (and its old chunks authenticated and decrypted) chunk by chunk into a newly sealed
  staging file, never whole in memory, and no plaintext touches the disk.
- Safe while the service runs: the new object is written whole to a staging file, then replaces the old one in
  one step (a rename on local disk, one PUT or multipart completion on S3); a reader sees the old object or the
  new one. A reader that read the old header and then the new chunks retries once (EncryptedStorage.open_range).
- Resumable and idempotent: each object is done on its own and objects already under the current key are left
  alone, so a run that stopped anywhere is finished by running it again. What a killed run staged is removed by
  the sweeper's staging clearance.
- An object deleted while it is re-sealed (a result expiring, a caller's delete) is not written back: it is
  checked again just before the swap. Were it deleted in the instant between, it would come back as an orphan,
  which the orphan sweep removes after its grace.

`dry_run` counts without writing: objects by key id, and how many (and how many bytes) a run would re-seal."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from facemint.storage import ObjectMissing, RangeNotSatisfiable, RemoteStorage, Storage, read_object, service_keys
from facemint.storage_crypto import (
    HEADER_MAX,
    Keyring,
    ObjectUnreadable,
    decrypt_chunks,
    encrypt_stream,
    parse_header,
    sealed_key_id,
    stored_form,
)

PLAINTEXT = "plaintext"  # how an object without an encryption header is counted
_REKEY_STAGING = ".rekey"


class RekeyError(RuntimeError):
    """Nothing can be re-sealed (the storage is not encrypted)."""


@dataclass
class RekeyReport:
    current_key_id: str
    by_key_id: Counter[str] = field(default_factory=Counter)  # objects found, by the key id they were under
    pending: int = 0  # not under the current key id when examined
    pending_bytes: int = 0  # their stored size
    resealed: int = 0
    resealed_elsewhere: int = 0  # found under the current key just before the swap (another run did it)
    gone: int = 0  # deleted while the run went on
    failed: list[tuple[str, str]] = field(default_factory=list)  # key, why (unreadable, a key not configured)


def rekey(storage: Storage, *, dry_run: bool = False, progress: Callable[[int], None] | None = None) -> RekeyReport:
    """Re-seal under the current key id every object of `storage` (an EncryptedStorage) that is not; `progress`
    is called with the count of objects examined every 1000."""
    raw, encrypted = stored_form(storage)
    if encrypted is None:
        raise RekeyError(
            "storage is not encrypted: set FACEMINT_STORAGE_ENCRYPTION_KEYS and FACEMINT_STORAGE_ENCRYPTION_KEY_ID"
        )
    keyring = encrypted.keyring
    report = RekeyReport(current_key_id=keyring.current)
    for examined, key in enumerate(service_keys(raw), start=1):
        if progress is not None and examined % 1000 == 0:
            progress(examined)
        try:
            key_id, size = _probe(raw, key)
        except ObjectMissing:
            report.gone += 1
            continue
        except ObjectUnreadable as exc:
            report.failed.append((key, str(exc)))
            continue
        report.by_key_id[key_id or PLAINTEXT] += 1
        if key_id == keyring.current:
            continue
        report.pending += 1
        report.pending_bytes += size
        if dry_run:
            continue
        try:
            outcome = _reseal(raw, keyring, key, key_id)
        except ObjectMissing:
            outcome = "gone"
        except ObjectUnreadable as exc:
            report.failed.append((key, str(exc)))
            continue
        if outcome == "gone":
            report.gone += 1
        elif outcome == "current":
            report.resealed_elsewhere += 1
        else:
            report.resealed += 1
    return report


def _probe(raw: Storage, key: str) -> tuple[str | None, int]:
    """The key id of the stored object (None: plaintext) and its stored size, from its first bytes only."""
    if isinstance(raw, RemoteStorage):
        try:
            read = raw.open_range(key, f"bytes=0-{HEADER_MAX - 1}")
        except RangeNotSatisfiable:
            return None, 0  # an empty object: plaintext
        try:
            head = b"".join(read.chunks)
        finally:
            read.close()
        return sealed_key_id(head), read.size
    local = raw.path(key)
    if local is None:
        raise ObjectMissing(key)
    try:
        with local.open("rb") as handle:
            return sealed_key_id(handle.read(HEADER_MAX)), os.fstat(handle.fileno()).st_size
    except FileNotFoundError as exc:
        raise ObjectMissing(key) from exc


def _reseal(raw: Storage, keyring: Keyring, key: str, key_id: str | None) -> str:
    """Seal the object under the current key into a staging file, then swap it in: "resealed", or "gone" /
    "current" when, just before the swap, the object was deleted or another run had re-sealed it."""
    sealed = raw.staging_path(f"{key}{_REKEY_STAGING}")
    try:
        with read_object(raw, key) as read, sealed.open("wb") as out:
            pieces = iter(read.chunks)
            if key_id is None:
                plain, size = pieces, read.size
            else:
                head = _take(pieces, HEADER_MAX)
                header = parse_header(head)
                rest = itertools.chain([head[len(header.raw) :]], pieces)
                plain, size = decrypt_chunks(header, keyring, rest), header.size
            source = _ChunkReader(plain)
            encrypt_stream(source, out, size, keyring)
            if source.read(1):  # and, for a sealed object, its last chunk checked as the last (no bytes after)
                raise ObjectUnreadable("the object holds more bytes than its header says")
        try:
            now_id, _ = _probe(raw, key)
        except ObjectMissing:
            return "gone"
        if now_id == keyring.current:
            return "current"
        raw.put_file(key, sealed)
        return "resealed"
    finally:
        sealed.unlink(missing_ok=True)


def _take(pieces: Iterator[bytes], count: int) -> bytes:
    """At least `count` bytes from `pieces` (fewer only at its end)."""
    data = bytearray()
    for piece in pieces:
        data += piece
        if len(data) >= count:
            break
    return bytes(data)


class _ChunkReader:
    """A file-like `read(n)` over an iterator of byte strings, one piece held at a time."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.piece = b""
        self.at = 0

    def read(self, size: int) -> bytes:
        parts = []
        while size > 0:
            if self.at >= len(self.piece):
                piece = next(self.pieces, None)
                if piece is None:
                    break
                self.piece, self.at = piece, 0
                continue
            part = self.piece[self.at : self.at + size]
            self.at += len(part)
            size -= len(part)
            parts.append(part)
        return b"".join(parts)
