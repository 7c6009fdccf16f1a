"""Streamed exports of the finance logs (CSV or JSONL), shared by the API and `facemint export`.

How it stays fast and flat:
- Postgres writes the rows itself: `COPY (SELECT ...) TO STDOUT` (CSV with a header, or one `row_to_json` line per
  row), so Python never touches a row. psycopg2's `copy_expert` runs in a helper thread and writes into an OS
  pipe; the generator reads the pipe in fixed-size chunks. The pipe's buffer is the backpressure: when the client
  reads slowly, COPY waits, and memory stays at a few chunks whatever the row count.
- The whole export reads ONE snapshot: its own connection (never the request's session) runs a REPEATABLE READ
  READ ONLY transaction for the totals, the COPY and the trailer, so the trailer's totals are those of exactly the
  rows above it, and they match the ledger at that instant even while jobs keep settling.

The trailer: CSV ends with a `# totals` row of `name=value` cells; JSONL ends with a `{"_trailer": {...}}` line.
It holds the row count, the log's sums (amounts; held/captured/released for usage), the snapshot's time and id,
and for the ledger the user and pool accounts' balance at the snapshot (within the tenant/user filters)."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine

from facemint.finance.logs import LEDGER, LogSpec
from facemint.finance.service import Filters, select_sql, totals_sql, tracked_balance_sql

logger = logging.getLogger("facemint.finance.exports")

ExportFormat = Literal["csv", "jsonl"]
MEDIA_TYPES: dict[str, str] = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
CHUNK_BYTES = 256 * 1024
PIPE_BYTES = 1024 * 1024
TRAILER_KEY = "_trailer"
CSV_TRAILER_MARK = "# totals"


class ExportStream:
    """One export. `open()` returns the byte chunks; its first item is `b""`, produced once the snapshot is taken
    and `totals` is known (so a caller can prime it to fail early, set headers or size a progress bar)."""

    def __init__(
        self,
        engine: Engine,
        *,
        log: LogSpec,
        filters: Filters,
        fmt: ExportFormat,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.engine = engine
        self.log = log
        self.filters = filters
        self.fmt = fmt
        self.chunk_bytes = chunk_bytes
        self.totals: dict[str, Any] | None = None
        self.bytes_sent = 0
        self.created = datetime.now(UTC)

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.fmt]

    @property
    def filename(self) -> str:
        return f"facemint-{self.log.name}-{self.created:%Y%m%dT%H%M%SZ}.{self.fmt}"

    def start(self) -> tuple[Iterator[bytes], dict[str, Any]]:
        """`open()`, primed: the snapshot is taken; the rest of the chunks, and the totals."""
        chunks = self.open()
        next(chunks)
        assert self.totals is not None
        return chunks, self.totals

    def open(self) -> Iterator[bytes]:
        connection = self.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        finished = False
        try:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            connection.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
            self.totals = self._totals(connection)
            yield b""
            yield from self._copy(connection)
            yield self._trailer()
            finished = True
        finally:
            if finished:
                connection.rollback()
            else:
                # Stopped mid-COPY (client gone, error): the connection's protocol state is unknown; drop it.
                connection.invalidate()
            connection.close()

    def _totals(self, connection: Connection) -> dict[str, Any]:
        # The first query takes the snapshot: every later statement of this transaction sees the same ledger.
        as_of, snapshot = connection.exec_driver_sql("SELECT statement_timestamp(), pg_current_snapshot()::text").one()
        sql, params = totals_sql(self.log, self.filters)
        row = connection.exec_driver_sql(sql, params).mappings().one()
        totals: dict[str, Any] = {k: int(v) for k, v in row.items()}
        if self.log is LEDGER:
            sql, params = tracked_balance_sql(self.filters)
            totals["tracked_balance"] = int(connection.exec_driver_sql(sql, params).scalar_one())
        totals["as_of"] = as_of.astimezone(UTC).isoformat().replace("+00:00", "Z")
        totals["snapshot"] = snapshot
        return totals

    def copy_sql(self, connection: Connection) -> str:
        render: Literal["csv", "json"] = "csv" if self.fmt == "csv" else "json"
        sql, params = select_sql(self.log, self.filters, render=render, ascending=True)
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            bound = cursor.mogrify(sql, params).decode()
        finally:
            cursor.close()
        if self.fmt == "csv":
            return f"COPY ({bound}) TO STDOUT WITH (FORMAT csv, HEADER true)"
        # One JSON document per line. CSV format with a delimiter and quote that JSON text never contains (it
        # escapes every control character) writes each document as is: the text format would double backslashes.
        return (
            f"COPY (SELECT row_to_json(s)::text FROM ({bound}) AS s) TO STDOUT "
            "WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')"
        )

    def _copy(self, connection: Connection) -> Iterator[bytes]:
        statement = self.copy_sql(connection)
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        read_fd, write_fd = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: a 1 MiB pipe, fewer wake-ups between COPY and the reader
            with suppress(OSError):
                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        reader = open(read_fd, "rb", buffering=self.chunk_bytes)  # noqa: SIM115 (closed below)
        writer = open(write_fd, "wb", buffering=self.chunk_bytes)  # noqa: SIM115 (closed by the thread)
        failures: list[BaseException] = []

        def run() -> None:
            try:
                cursor.copy_expert(statement, writer)
                writer.flush()
            except BaseException as exc:  # handed to the reading side
                failures.append(exc)
            finally:
                with suppress(OSError):
                    writer.close()

        thread = threading.Thread(target=run, name=f"export-{self.log.name}", daemon=True)
        thread.start()
        try:
            while chunk := reader.read(self.chunk_bytes):
                self.bytes_sent += len(chunk)
                yield chunk
        finally:
            reader.close()  # a writer blocked on a full pipe now fails (EPIPE) and the COPY ends
            thread.join()
            with suppress(Exception):
                cursor.close()
        if failures:
            logger.error("export of %s failed: %s", self.log.name, failures[0])
            raise failures[0]

    def _trailer(self) -> bytes:
        totals = self.totals or {}
        if self.fmt == "jsonl":
            return (json.dumps({TRAILER_KEY: totals}, separators=(",", ":")) + "\n").encode()
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([CSV_TRAILER_MARK, *(f"{k}={v}" for k, v in totals.items())])
        return buffer.getvalue().encode()


def parse_csv_trailer(line: str) -> dict[str, str]:
    """The `# totals` row back into a dict (for tests and tools)."""
    cells = next(csv.reader([line]))
    if not cells or cells[0] != CSV_TRAILER_MARK:
        raise ValueError("not a totals row")
    return dict(cell.split("=", 1) for cell in cells[1:])
