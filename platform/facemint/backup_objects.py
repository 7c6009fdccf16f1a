"""The stored objects of a backup (facemint.backup): read, copied, checked and restored as streams, chunk by
chunk, so an object of any size (a video, on disk or in S3) never sits in memory.

A backup keeps each object as it is stored: on encrypted storage that is the ciphertext, with the key id from its
header in the manifest. So a backup holds no plaintext a storage did not, its checksums are those of the stored
bytes (checkable without any key), and a restore needs the keys the manifest names (it checks they are configured
before it writes anything). An object stored as plaintext restored into encrypted storage is sealed on the way
in (checked afterwards by its decrypted bytes), so turning encryption on and restoring go together."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from facemint.storage import ObjectMissing, Storage, read_object
from facemint.storage_crypto import HEADER_MAX, ObjectUnreadable, sealed_key_id, stored_form


class ObjectProblem(RuntimeError):
    """An object cannot be backed up or restored as the manifest says; the message names it."""


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    size: int
    sha256: str
    # The key id in the stored object's encryption header; None: stored as plaintext. Backups of format 1 have
    # none: their objects were copied decrypted.
    key_id: str | None = None

    @property
    def facts(self) -> tuple[int, str]:
        return self.size, self.sha256


def read_entry(storage: Storage, key: str, *, copy_to: Path | None = None) -> ManifestEntry | None:
    """Size, SHA-256 and key id of the object as `storage` returns it, streamed (and written to `copy_to`); None
    when there is no object under `key` (deleted since it was listed)."""
    digest = hashlib.sha256()
    size = 0
    head = bytearray()
    out = None
    try:
        with read_object(storage, key) as read:
            if copy_to is not None:
                copy_to.parent.mkdir(parents=True, exist_ok=True)
                out = copy_to.open("wb")
            for piece in read.chunks:
                digest.update(piece)
                size += len(piece)
                if len(head) < HEADER_MAX:
                    head += piece[: HEADER_MAX - len(head)]
                if out is not None:
                    out.write(piece)
    except ObjectMissing:
        if copy_to is not None:
            copy_to.unlink(missing_ok=True)
        return None
    finally:
        if out is not None:
            out.close()
    try:
        key_id = sealed_key_id(bytes(head))
    except ObjectUnreadable as exc:
        raise ObjectProblem(f"object {key} has a damaged encryption header: {exc}") from exc
    return ManifestEntry(key=key, size=size, sha256=digest.hexdigest(), key_id=key_id)


def check_keys(entries: Iterable[ManifestEntry], storage: Storage) -> None:
    """Refuse a restore whose objects are sealed under keys `storage` lacks (it could never serve them)."""
    needed = sorted({entry.key_id for entry in entries if entry.key_id is not None})
    if not needed:
        return
    _, encrypted = stored_form(storage)
    configured = set(encrypted.keyring.keys) if encrypted is not None else set()
    missing = [key_id for key_id in needed if key_id not in configured]
    if missing:
        raise ObjectProblem(
            f"the backup's objects are sealed under key id(s) {', '.join(missing)}, which the settings do not "
            "hold: restore with FACEMINT_STORAGE_ENCRYPTION_KEYS (and FACEMINT_STORAGE_ENCRYPTION_KEY_ID) "
            "listing them"
        )


def _view(storage: Storage, entry: ManifestEntry) -> Storage:
    """Where `entry` is stored and read back: as it was stored, except that a plaintext object restored into
    encrypted storage goes through the encryption (sealed on the way in, compared by its plaintext)."""
    raw, encrypted = stored_form(storage)
    return encrypted if encrypted is not None and entry.key_id is None else raw


def already_present(storage: Storage, entry: ManifestEntry) -> bool:
    """Whether `storage` holds `entry`'s content under its key already; ObjectProblem when it holds other
    content there (a restore never overwrites)."""
    raw, _ = stored_form(storage)
    found = read_entry(raw, entry.key)
    if found is None:
        return False
    if found.facts == entry.facts:
        return True
    view = _view(storage, entry)
    if view is not raw and found.key_id is not None:  # sealed here, plaintext in the backup: compare plaintexts
        try:
            plain = read_entry(view, entry.key)
        except ObjectUnreadable:
            plain = None
        if plain is not None and plain.facts == entry.facts:
            return True
    raise ObjectProblem(f"storage already holds {entry.key} with other content: restore into empty storage")


def restore_entry(storage: Storage, entry: ManifestEntry, copy: Path) -> None:
    """Store the backup's copy of `entry` (streamed: a staged file, then `put_file`), then read it back and
    compare it with the manifest."""
    view = _view(storage, entry)
    staging = view.staging_path(entry.key)
    try:
        shutil.copyfile(copy, staging)
        view.put_file(entry.key, staging)
    finally:
        staging.unlink(missing_ok=True)
    stored = read_entry(view, entry.key)
    if stored is None or stored.facts != entry.facts:
        raise ObjectProblem(f"object {entry.key} differs from the manifest after it was stored")
