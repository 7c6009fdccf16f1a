"""`facemint storage rekey`: stored objects re-sealed under the current encryption key (facemint.storage_rekey)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from facemint.config import Settings


def register(cli: click.Group, settings: Callable[[], Settings]) -> None:
    """`settings` returns the Settings, or exits with one clear line when they are invalid."""

    @cli.group()
    def storage() -> None:
        """Stored inputs and results: encryption at rest."""

    @storage.command("rekey")
    @click.option("--dry-run", is_flag=True, help="count the objects by key id; change nothing")
    def rekey(dry_run: bool) -> None:
        """Re-encrypt every stored object not sealed under FACEMINT_STORAGE_ENCRYPTION_KEY_ID, plaintext ones
        from before encryption was on included: streamed, one object at a time (the new object written whole,
        then swapped in), safe while the service runs, and finished by running it again if it stopped. Exit 0
        when every object is under the current key (with --dry-run: always, unless an object is unreadable); 1
        when an object could not be re-encrypted (listed) or storage is not encrypted."""
        from facemint.storage import make_storage
        from facemint.storage_rekey import RekeyError, rekey

        loaded = settings()
        try:
            report = rekey(
                make_storage(loaded),
                dry_run=dry_run,
                progress=lambda count: click.echo(f"  {count} object(s) examined", err=True),
            )
        except RekeyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        counts = ", ".join(f"{key_id}={count}" for key_id, count in sorted(report.by_key_id.items())) or "none"
        click.echo(f"objects by key id: {counts}")
        current = report.current_key_id
        if dry_run:
            click.echo(
                f"{report.pending} object(s) ({report.pending_bytes} bytes) are not under the current key id "
                f"{current}: a run would re-encrypt them"
            )
        else:
            click.echo(
                f"re-encrypted {report.resealed} object(s) under key id {current}; {report.gone} deleted meanwhile, "
                f"{report.resealed_elsewhere} re-encrypted by another run"
            )
        for key, problem in report.failed[:50]:
            click.echo(f"FAILED {key}: {problem}", err=True)
        if len(report.failed) > 50:
            click.echo(f"  ... and {len(report.failed) - 50} more", err=True)
        sys.exit(1 if report.failed else 0)
