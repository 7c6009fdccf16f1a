"""`facemint backup` / `facemint restore`: the database and the stored objects, together (facemint.backup)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from facemint.config import Settings


@contextmanager
def _owner_url(settings: Settings) -> Iterator[str]:
    """The schema owner's URL: the configured one (FACEMINT_DATABASE_OWNER_URL, else FACEMINT_DATABASE_URL), or the
    embedded server's under the data dir. Not migrated here: a restore needs its database empty."""
    if settings.database_url:
        owner = settings.migration_database_url
        assert owner is not None
        yield owner
        return
    from facemint import embedded

    postgres = embedded.start_postgres(settings.data_dir, app_role=settings.database_app_role)
    try:
        yield postgres.owner_url
    finally:
        postgres.cleanup()


def register(cli: click.Group, settings: Callable[[], Settings]) -> None:
    """`settings` returns the Settings, or exits with one clear line when they are invalid."""

    @cli.command("backup")
    @click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="a new folder")
    @click.option(
        "--with-files/--without-files",
        default=True,
        show_default=True,
        help="copy the stored objects into the backup (without: only their manifest)",
    )
    def backup(out: Path, with_files: bool) -> None:
        """Back up the database (pg_dump, as the schema's owner) and the stored inputs and results (a manifest
        of sizes and SHA-256, and a copy of each) into the new folder OUT. Exit 1 when OUT exists."""
        from facemint import backup as backups
        from facemint.storage import make_storage

        loaded = settings()
        try:
            with _owner_url(loaded) as owner_url:
                summary = backups.create_backup(owner_url, make_storage(loaded), out, with_files=with_files)
        except backups.BackupError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        click.echo(
            f"backup written to {summary.path}: database at {summary.migration_head} ({summary.dump_bytes} bytes; "
            + ", ".join(f"{k}={v}" for k, v in summary.counts.items())
            + f"), {summary.objects} object(s) of {summary.object_bytes} bytes "
            + ("copied" if summary.with_files else "listed, not copied")
        )

    @cli.command("restore")
    @click.option("--from", "source", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
    def restore(source: Path) -> None:
        """Restore a backup into an EMPTY database and storage: checksums checked first, then pg_restore, the
        application role's grants (as `facemint migrate` gives them), the objects (each checked once stored).
        Refuses (exit 1, nothing changed) a database that holds any table, or a damaged backup."""
        from facemint import backup as backups
        from facemint.storage import make_storage

        loaded = settings()
        try:
            with _owner_url(loaded) as owner_url:
                summary = backups.restore_backup(
                    owner_url, make_storage(loaded), source, app_role=loaded.database_app_role
                )
        except backups.BackupError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        click.echo(
            f"restored database at {summary.migration_head} ("
            + ", ".join(f"{k}={v}" for k, v in summary.counts.items())
            + f"); {summary.objects_restored} object(s) restored, {summary.objects_skipped} already present"
        )
        if summary.objects_missing:
            # A backup without files: the objects must be put back from elsewhere (the old storage, a bucket).
            click.echo(f"{len(summary.objects_missing)} object(s) in the manifest are not in storage:", err=True)
            for key in summary.objects_missing[:50]:
                click.echo(f"  {key}", err=True)
            sys.exit(3)
