"""`facemint ledger seal | verify | digest`: the sealed books from the command line (billing.sealing)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from billing.sealing.schemas import VerifyReport
from facemint.config import Settings


@contextmanager
def _snapshot(settings: Settings) -> Iterator[Session]:
    """A read-only session on one snapshot of the configured (or embedded) database, for verify and digest."""
    from facemint.cli.main import _database
    from facemint.db import make_engine, snapshot_session

    with _database(settings) as url:
        engine = make_engine(url, pool_size=1)
        try:
            with snapshot_session(engine) as session:
                yield session
        finally:
            engine.dispose()


def _print_verify(report: VerifyReport, limit: int) -> None:
    for stream, seals in report.seals.items():
        click.echo(f"{stream}: {seals} seal(s), {report.rows.get(stream, 0)} sealed row(s) checked")
    for stream, kinds in report.change_counts.items():
        for kind, count in sorted(kinds.items()):
            ids = report.ids(stream, kind)[:limit]
            more = f" (and {count - len(ids)} more)" if count > len(ids) else ""
            click.echo(f"{kind.upper()} {stream}: {count} row(s), ids {', '.join(map(str, ids))}{more}")
    for problem in report.seal_problems:
        where = f"seal {problem.seq}" if problem.seq is not None else "chain"
        click.echo(f"BROKEN {problem.stream} {where}: {problem.problem}")
    if report.anchors_checked:
        click.echo(f"{report.anchors_checked} anchored digest(s) checked")
    if report.intact:
        click.echo("the sealed books are intact")
    else:
        changed = sum(n for kinds in report.change_counts.values() for n in kinds.values())
        click.echo(f"NOT INTACT: {changed} changed row(s), {len(report.seal_problems)} broken seal check(s)")


def register(cli: click.Group, settings: Callable[[], Settings]) -> None:
    """`settings` returns the Settings, or exits with one clear line when they are invalid."""

    @cli.group()
    def ledger() -> None:
        """Sealed books: hash finished ledger entries and audit events into a chain, verify it, export it."""

    @ledger.command("seal")
    @click.option("--max-rows", type=click.IntRange(min=1), default=None, help="rows per batch (default: settings)")
    def seal(max_rows: int | None) -> None:
        """Seal every finished row not sealed yet, in batches, until caught up."""
        from billing.sealing import service as sealing
        from facemint.cli.main import _database, _session

        loaded = settings()
        batch = max_rows or loaded.seal_batch_max_rows
        with _database(loaded) as url, _session(url) as session:
            results = sealing.seal_all(session, max_rows=batch)
        for stream in sealing.STREAMS:
            mine = [r for r in results if r.stream == stream]
            if not mine:
                click.echo(f"{stream}: nothing new to seal")
                continue
            rows = sum(r.n_rows for r in mine)
            click.echo(
                f"{stream}: sealed {rows} row(s) in {len(mine)} batch(es), seals {mine[0].seq}..{mine[-1].seq}, "
                f"head {mine[-1].hash.hex()}"
            )

    @ledger.command("verify")
    @click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
    @click.option(
        "--anchor",
        "anchor_files",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="a digest exported by `facemint ledger digest` (repeatable): the chain must still reach it",
    )
    @click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="ids listed per kind")
    def verify(as_json: bool, anchor_files: tuple[Path, ...], limit: int) -> None:
        """Recompute every seal from the rows; exit 1 listing modified, deleted and inserted rows and broken
        links, 0 when intact."""
        from billing.sealing import service as sealing

        anchors: list[dict[str, Any]] = []
        for path in anchor_files:
            try:
                anchors.extend(sealing.anchors_from_digest(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                click.echo(f"error: {path} is not a digest: {exc}", err=True)
                sys.exit(2)
        with _snapshot(settings()) as session:
            report = sealing.verify(session, anchors=anchors, limit=limit)
        if as_json:
            click.echo(json.dumps(report.as_dict()))
        else:
            _print_verify(report, limit)
        sys.exit(0 if report.intact else 1)

    @ledger.command("digest")
    @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
    def digest(output: Path | None) -> None:
        """The latest seal of each stream as JSON, to keep outside the database (give it back to verify --anchor)."""
        from billing.sealing import service as sealing

        with _snapshot(settings()) as session:
            document = sealing.latest_digest(session)
        if not document["streams"]:
            click.echo("nothing sealed yet: run `facemint ledger seal`", err=True)
        body = json.dumps(document, indent=2)
        if output is None:
            click.echo(body)
            return
        try:
            output.write_text(body + "\n")
        except OSError as exc:
            click.echo(f"error: cannot write {output}: {exc.strerror}", err=True)
            sys.exit(1)
        click.echo(f"digest written to {output}", err=True)
