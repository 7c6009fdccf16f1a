"""Streamed exports of the finance logs (CSV or JSONL), shared by the API and `facemint export`.

How it stays fast and flat:
- Postgres writes the rows itself: `COPY (SELECT ...) TO STDOUT` (CSV with a header, or one `row_to_json` line per
  row), so Python never touches a row. psycopg2's `copy_expert` runs in a helper thread and writes into an OS
  pipe; the generator reads the pipe in fixed-size chunks. The pipe's buffer is the backpressure: when the client
  reads slowly, COPY waits, and memory stays at a few chunks whatever the row count.
- The whole export reads ONE snapshot: its own connection (never the request's session) runs a REPEATABLE READ
  READ ONLY transaction for the totals, the COPY and the trailer, so the trailer's totals are those of exactly the
  rows above it, and they match the ledger at that instant even while jobs keep settling.

How it stays short: a snapshot held open keeps every row version since it began alive (vacuum cannot remove them),
so it must never outlive its purpose.
- `abort()`, from any thread, stops the export at once whatever it is doing: it cancels the running statement
  (psycopg2's `connection.cancel()`), wakes a thread blocked on the pipe (both ends wait on a stop signal as well as
  the pipe), and the generator then raises `ExportAborted` and drops its connection (never handed back to the
  pool mid-COPY: a rollback there would first read the rest of the COPY).
- `max_seconds` is a time limit on the whole snapshot (totals, COPY, trailer): a watchdog aborts the export at the
  deadline, and the transaction's own statement_timeout and idle_in_transaction_session_timeout end it on the
  server should this process stall.
- An export that is stopped never writes its trailer, so a reader can always tell a cut export from a whole one.

The trailer: CSV ends with a `# totals` row of `name=value` cells; JSONL ends with a `{"_trailer": {...}}` line.
It holds the row count, the log's sums (amounts; held/captured/released for usage), the snapshot's time and id,
and for the ledger the user and pool accounts' balance at the snapshot (within the tenant/user filters)."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Generator
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
# What pg_stat_activity shows for an export's backend.
APPLICATION_NAME = "facemint export"
# While the COPY thread outlives an abort: how often its statement is cancelled again (a cancel that reaches the
# server between two statements is ignored), and when its socket is shut down instead (a server out of reach).
_RECANCEL_SECONDS = 0.2
_SHUTDOWN_AFTER_SECONDS = 5.0
# Postgres ending a statement or a transaction on its own: statement_timeout, idle_in_transaction_session_timeout.
_SERVER_TIMEOUTS = frozenset({"57014", "25P03"})


class ExportAborted(Exception):
    """The export stopped before its end (`abort()`: its client went away, or its time limit): nothing more is
    produced, in particular no trailer."""


class ExportTimedOut(ExportAborted):
    """The export's snapshot ran past its time limit."""


class _PipeEnd(io.RawIOBase):
    """One end of the pipe between COPY and the reader, non-blocking underneath: a read or write that would block
    waits on the pipe and on the export's stop signal together, so `abort()` wakes a thread stuck on a full or an
    empty pipe at once (closing a descriptor that another thread is blocked on would not)."""

    def __init__(self, fd: int, *, writing: bool, stop_fd: int, stopped: Callable[[], ExportAborted | None]) -> None:
        super().__init__()
        self._fd = fd
        self._writing = writing
        self._stopped = stopped
        os.set_blocking(fd, False)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT if writing else select.POLLIN)
        self._poll.register(stop_fd, select.POLLIN)

    def fileno(self) -> int:
        return self._fd

    def readable(self) -> bool:
        return not self._writing

    def writable(self) -> bool:
        return self._writing

    def readinto(self, buffer: Any) -> int:
        while True:
            self._check()
            try:
                return os.readv(self._fd, [buffer])
            except BlockingIOError:
                self._poll.poll()

    def write(self, data: Any) -> int:
        while True:
            self._check()
            try:
                return os.write(self._fd, data)
            except BlockingIOError:
                self._poll.poll()

    def _check(self) -> None:
        error = self._stopped()
        if error is not None:
            raise error

    def close(self) -> None:
        if not self.closed:
            try:
                super().close()
            finally:
                os.close(self._fd)


class ExportStream:
    """One export. `open()` returns the byte chunks; its first item is `b""`, produced once the snapshot is taken
    and `totals` is known (so a caller can prime it to fail early, set headers or size a progress bar).

    `max_seconds` (None: no limit) bounds the snapshot from `open()` on; past it the export is cut (ExportTimedOut).
    `abort()` may be called from any thread at any time."""

    def __init__(
        self,
        engine: Engine,
        *,
        log: LogSpec,
        filters: Filters,
        fmt: ExportFormat,
        chunk_bytes: int = CHUNK_BYTES,
        max_seconds: float | None = None,
    ) -> None:
        self.engine = engine
        self.log = log
        self.filters = filters
        self.fmt = fmt
        self.chunk_bytes = chunk_bytes
        self.max_seconds = max_seconds
        self.totals: dict[str, Any] | None = None
        self.bytes_sent = 0
        self.created = datetime.now(UTC)
        # Shared with `abort()` (any thread), under the lock: why it stopped, whether it has ended, the DBAPI
        # connection to cancel while one is open, and the stop signal (a pipe that becomes readable on abort).
        self._lock = threading.Lock()
        self._stop: ExportAborted | None = None
        self._ended = False
        self._dbapi: Any = None
        self._signal: tuple[int, int] | None = None
        self._parked = False  # suspended between the totals and the COPY: nobody is using the connection
        self._deadline: float | None = None
        self._watchdog: threading.Timer | None = None

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.fmt]

    @property
    def filename(self) -> str:
        return f"facemint-{self.log.name}-{self.created:%Y%m%dT%H%M%SZ}.{self.fmt}"

    def start(self) -> tuple[Generator[bytes], dict[str, Any]]:
        """`open()`, primed: the snapshot is taken; the rest of the chunks, and the totals."""
        chunks = self.open()
        next(chunks)
        assert self.totals is not None
        return chunks, self.totals

    def abort(self, error: ExportAborted | None = None) -> None:
        """Stop the export now, from any thread: the running statement is cancelled, a thread blocked on the pipe
        wakes, and the generator raises `error` (ExportAborted by default) at its next step, without a trailer,
        and drops its connection. Does nothing once the export has ended or was already stopped."""
        with self._lock:
            if self._ended or self._stop is not None:
                return
            self._stop = error or ExportAborted(f"the export of {self.log.name} was aborted")
            if self._signal is not None:
                os.write(self._signal[1], b"\0")
            self._cancel_locked()
            if self._parked and self._dbapi is not None:
                # An idle transaction has no statement to cancel, and nobody is using its connection: close it.
                dbapi, self._dbapi = self._dbapi, None
                with suppress(Exception):
                    dbapi.close()

    def open(self) -> Generator[bytes]:
        connection: Connection | None = None
        clean = False
        try:
            connection = self._connect()
            self._set_up(connection)
            self.totals = self._totals(connection)
            self._park(True)
            yield b""
            self._park(False)
            yield from self._copy(connection)
            clean = True
        except Exception as exc:
            stopped = self._stopped_by(exc)
            if stopped is None:
                raise
            raise stopped from exc
        finally:
            cut = self._end(connection, clean=clean)
        if cut is not None:  # stopped after the last row was read: still no trailer
            raise cut
        yield self._trailer()

    # --- the snapshot's lifetime -----------------------------------------------------------------------------

    def _connect(self) -> Connection:
        with self._lock:
            if self._stop is not None:
                raise self._stopped()
            self._signal = os.pipe()
            if self.max_seconds is not None:
                self._deadline = time.monotonic() + self.max_seconds
                limit = ExportTimedOut(
                    f"the export of {self.log.name} ran past its time limit ({self.max_seconds:g} s) and was cut"
                )
                self._watchdog = threading.Timer(self.max_seconds, self.abort, kwargs={"error": limit})
                self._watchdog.daemon = True
                self._watchdog.start()
        connection = self.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        with self._lock:
            self._dbapi = connection.connection.dbapi_connection
            stop = self._stop
        if stop is not None:  # aborted while connecting: nothing was cancelled
            connection.invalidate()
            connection.close()
            raise self._stopped()
        return connection

    def _set_up(self, connection: Connection) -> None:
        limit_ms = self._remaining_ms() if self.max_seconds is not None else None
        self._check()
        connection.exec_driver_sql(snapshot_setup_sql(limit_ms))

    def _park(self, parked: bool) -> None:
        with self._lock:
            self._parked = parked
            if not parked and self._stop is not None:
                raise self._stopped()

    def _remaining_ms(self) -> int:
        if self._deadline is None:
            return 0
        remaining = math.ceil((self._deadline - time.monotonic()) * 1000)
        if remaining <= 0:
            self.abort(ExportTimedOut(f"the export of {self.log.name} ran past its time limit"))
            raise self._stopped()
        return remaining

    def _check(self) -> None:
        """Before each statement: a cancel that reaches the server between two statements is ignored."""
        with self._lock:
            if self._stop is not None:
                raise self._stopped()

    def _stopped(self) -> ExportAborted:
        """A fresh instance of why the export stopped (each raise gets its own traceback)."""
        stop = self._stop
        assert stop is not None
        return type(stop)(*stop.args)

    def _stopped_by(self, exc: Exception) -> ExportAborted | None:
        """What an error in the export really is: the stop that caused it (a cancelled statement, a broken pipe),
        the time limit when the server's backstop ended the statement or transaction, or None: a genuine error."""
        if isinstance(exc, ExportAborted):
            return None
        with self._lock:
            if self._stop is not None:
                return self._stopped()
        cause = getattr(exc, "orig", None) or exc
        if self._deadline is not None and getattr(cause, "pgcode", None) in _SERVER_TIMEOUTS:
            # The same limit as the watchdog's, whichever of the two fired first.
            return ExportTimedOut(
                f"the export of {self.log.name} ran past its time limit ({self.max_seconds:g} s) and was ended by the "
                "server"
            )
        return None

    def _cancel_locked(self) -> None:
        if self._dbapi is not None:
            with suppress(Exception):  # a connection that is already gone has nothing left to cancel
                self._dbapi.cancel()

    def _end(self, connection: Connection | None, *, clean: bool) -> ExportAborted | None:
        """Close the snapshot; returns why the export was stopped, if it was. From here `abort()` does nothing, and
        no cancel is in flight: the connection can be closed."""
        with self._lock:
            self._ended = True
            self._dbapi = None
            stop = self._stopped() if self._stop is not None else None
            signal, self._signal = self._signal, None
        if self._watchdog is not None:
            self._watchdog.cancel()
        for fd in signal or ():
            os.close(fd)
        if connection is not None:
            try:
                if clean and stop is None:
                    connection.rollback()
                else:
                    # Stopped (client gone, time limit, error): the connection may be mid-COPY, which a rollback
                    # would first read to its end; closing it ends the backend and its transaction at once.
                    connection.invalidate()
            finally:
                connection.close()
        return stop

    # --- the data ----------------------------------------------------------------------------------------------

    def _totals(self, connection: Connection) -> dict[str, Any]:
        # The first query takes the snapshot: every later statement of this transaction sees the same ledger.
        self._check()
        as_of, snapshot = connection.exec_driver_sql("SELECT statement_timestamp(), pg_current_snapshot()::text").one()
        sql, params = totals_sql(self.log, self.filters)
        self._check()
        row = connection.exec_driver_sql(sql, params).mappings().one()
        totals: dict[str, Any] = {k: int(v) for k, v in row.items()}
        if self.log is LEDGER:
            sql, params = tracked_balance_sql(self.filters)
            self._check()
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

    def _copy(self, connection: Connection) -> Generator[bytes]:
        statement = self.copy_sql(connection)
        if self.max_seconds is not None:
            self._check()
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {self._remaining_ms()}")
        self._check()
        assert self._signal is not None
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        read_fd, write_fd = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: a 1 MiB pipe, fewer wake-ups between COPY and the reader
            with suppress(OSError):
                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        stop_fd = self._signal[0]
        reader = io.BufferedReader(
            _PipeEnd(read_fd, writing=False, stop_fd=stop_fd, stopped=self._stop_error), self.chunk_bytes
        )
        writer = io.BufferedWriter(
            _PipeEnd(write_fd, writing=True, stop_fd=stop_fd, stopped=self._stop_error), self.chunk_bytes
        )
        dbapi: Any = connection.connection.dbapi_connection
        failures: list[BaseException] = []

        # From here until it ends, this thread alone uses the connection (the reader only reads the pipe), so it
        # ends the transaction itself, at once, without waiting for the reader: whatever becomes of the reader
        # (suspended behind a client that stopped reading, or gone), no snapshot outlives its COPY.
        def run() -> None:
            try:
                cursor.copy_expert(statement, writer)
                # The last row is out and the trailer's totals were read first: the snapshot ends now, not once a
                # slow client has read what is still buffered.
                dbapi.rollback()
                writer.flush()
            except BaseException as exc:  # handed to the reading side
                failures.append(exc)
                self._drop(dbapi)
            finally:
                with suppress(Exception):  # a failed flush (stopped, reader gone) still closes the pipe
                    writer.close()

        thread = threading.Thread(target=run, name=f"export-{self.log.name}", daemon=True)
        thread.start()
        complete = False
        try:
            while chunk := reader.read(self.chunk_bytes):
                self.bytes_sent += len(chunk)
                yield chunk
            complete = True
        finally:
            if not complete:  # the reader stopped early (closed, aborted, failed): the COPY must not run on
                self.abort(ExportAborted(f"the export of {self.log.name} stopped before its end"))
            reader.close()  # a writer blocked on a full pipe now fails (EPIPE) and the COPY ends
            self._join(thread)
            with suppress(Exception):
                cursor.close()
        if failures:
            logger.error("export of %s failed: %s", self.log.name, failures[0])
            raise failures[0]

    def _drop(self, dbapi: Any) -> None:
        """Close the DBAPI connection now, from the thread using it: a COPY stopped midway leaves the protocol
        mid-stream (a rollback would first read the rest), and closing ends the backend and its transaction. The
        pool's record of it is invalidated when the generator ends."""
        with self._lock:
            self._dbapi = None  # no cancel may race the close
        with suppress(Exception):
            dbapi.close()

    def _stop_error(self) -> ExportAborted | None:
        # Read without the lock by the pipe's ends: a reference read is atomic, and a stop is never undone.
        return self._stopped() if self._stop is not None else None

    def _join(self, thread: threading.Thread) -> None:
        """Wait for the COPY thread. Once stopped, its statement is cancelled again every few tenths of a second
        (a cancel is lost if it reaches the server between statements); a server that does not answer at all has
        the connection's socket shut down under it, which ends any read libpq is blocked in."""
        waited = 0.0
        shut = False
        while True:
            thread.join(_RECANCEL_SECONDS)
            if not thread.is_alive():
                return
            with self._lock:
                if self._stop is None:
                    continue
                waited += _RECANCEL_SECONDS
                self._cancel_locked()
                if waited >= _SHUTDOWN_AFTER_SECONDS and not shut and self._dbapi is not None:
                    logger.warning("export of %s: no answer to a cancel; shutting its socket down", self.log.name)
                    _shut_down(self._dbapi.fileno())
                    shut = True

    def _trailer(self) -> bytes:
        totals = self.totals or {}
        if self.fmt == "jsonl":
            return (json.dumps({TRAILER_KEY: totals}, separators=(",", ":")) + "\n").encode()
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([CSV_TRAILER_MARK, *(f"{k}={v}" for k, v in totals.items())])
        return buffer.getvalue().encode()


def snapshot_setup_sql(limit_ms: int | None) -> str:
    """The statements that open an export's transaction (before its first query, which takes the snapshot). With a
    limit, the server's own backstop: no statement and no idle pause within the snapshot outlasts it."""
    statements = [
        "SET TRANSACTION READ ONLY",
        "SET LOCAL TimeZone = 'UTC'",
        f"SET LOCAL application_name = '{APPLICATION_NAME}'",
    ]
    if limit_ms is not None:
        statements.append(f"SET LOCAL statement_timeout = {int(limit_ms)}")
        statements.append(f"SET LOCAL idle_in_transaction_session_timeout = {int(limit_ms)}")
    return "; ".join(statements)


def _shut_down(fd: int) -> None:
    """Shut a socket down for both directions from any thread (a blocked read in another thread returns), through
    a duplicate of its descriptor so the owner's stays valid until it closes it."""
    with suppress(OSError), socket.socket(fileno=os.dup(fd)) as duplicate:
        duplicate.shutdown(socket.SHUT_RDWR)


def parse_csv_trailer(line: str) -> dict[str, str]:
    """The `# totals` row back into a dict (for tests and tools)."""
    cells = next(csv.reader([line]))
    if not cells or cells[0] != CSV_TRAILER_MARK:
        raise ValueError("not a totals row")
    return dict(cell.split("=", 1) for cell in cells[1:])
