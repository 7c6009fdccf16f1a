"""`facemint export ...`: the finance logs streamed to a file, straight from the database."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import click

from facemint.config import Settings
from facemint.finance.logs import LOGS


def register(cli: click.Group, settings: Callable[[], Settings]) -> None:
    @cli.command("export")
    @click.argument("log", type=click.Choice(list(LOGS)))
    @click.option("--from", "start", type=click.DateTime(), default=None, help="UTC, inclusive")
    @click.option("--to", "end", type=click.DateTime(), default=None, help="UTC, exclusive")
    @click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
    @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
    @click.option("--tenant-id", type=int, default=None)
    @click.option(
        "--max-seconds",
        type=click.IntRange(min=1),
        default=None,
        help="time limit on the export's snapshot (default: the export_max_seconds setting, 900)",
    )
    @click.option("--quiet", is_flag=True, help="no progress bar")
    def export(
        log: str,
        start: datetime | None,
        end: datetime | None,
        fmt: str,
        output: Path,
        tenant_id: int | None,
        max_seconds: int | None,
        quiet: bool,
    ) -> None:
        """Export a finance log (the same stream as GET /admin/v1/finance/LOG/export): one consistent snapshot,
        ending with a totals trailer. Reads the database directly, across every tenant unless --tenant-id. The
        file appears only once the export is whole; one cut at the time limit leaves nothing behind."""
        from sqlalchemy.orm import Session

        from facemint.cli.main import _database
        from facemint.db import make_engine
        from facemint.finance.errors import InvalidFilter
        from facemint.finance.exports import ExportStream, ExportTimedOut
        from facemint.finance.service import resolve_filters

        config = settings()
        limit = max_seconds or config.export_max_seconds
        with _database(config) as url:
            engine = make_engine(url, pool_size=1)
            tmp = output.with_name(output.name + ".part")
            try:
                with engine.connect() as connection, Session(bind=connection) as session:
                    filters = resolve_filters(
                        session, log=LOGS[log], tenant_scope=None, tenant_id=tenant_id, start=start, end=end
                    )
                stream = ExportStream(
                    engine,
                    log=LOGS[log],
                    filters=filters,
                    fmt="jsonl" if fmt == "jsonl" else "csv",
                    max_seconds=limit,
                )
                chunks, totals = stream.start()
                rows = int(totals["rows"])
                with (
                    tmp.open("wb") as out,
                    click.progressbar(
                        length=rows + (2 if fmt == "csv" else 1),
                        label=f"{log} ({rows} rows)",
                        file=sys.stderr,
                        hidden=quiet,
                    ) as bar,
                ):
                    for chunk in chunks:
                        out.write(chunk)
                        bar.update(chunk.count(b"\n"))
                tmp.replace(output)
            except InvalidFilter as exc:
                raise click.UsageError(exc.detail) from exc
            except ExportTimedOut as exc:
                raise click.ClickException(f"{exc}; nothing written (raise --max-seconds)") from exc
            finally:
                tmp.unlink(missing_ok=True)
                engine.dispose()
        summary = ", ".join(f"{k}={v}" for k, v in totals.items() if k != "snapshot")
        click.echo(f"wrote {output} ({stream.bytes_sent} bytes): {summary}", err=True)
