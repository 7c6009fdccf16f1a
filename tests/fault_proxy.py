"""A fault-injecting proxy in front of Postgres, for tests: an asyncio TCP server in a background thread that
forwards the PostgreSQL wire protocol and, once armed, loses the reply to one COMMIT.

An ambiguous commit: the client sends COMMIT, the server commits and answers, and the answer never arrives (the
proxy drops it and closes both sides). The client cannot tell a commit that landed from one that did not; the
code under test has to find out from the database (a business key, or the state a guarded transition left).

Only what the fault needs is parsed: the client's messages (a simple Query whose text is COMMIT, and the
statements of the transaction it ends) and, while dropping, the server's messages up to ReadyForQuery. psycopg2
sends every statement, BEGIN and COMMIT included, as a simple Query message."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

# Untyped requests a client may send before its startup message; the server answers each with one byte.
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


class PostgresFaultProxy:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        parts = urlsplit(database_url)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or unquote(parts.hostname or "") or "/tmp"
        port = query.get("port") or (str(parts.port) if parts.port else "5432")
        # libpq's rule: a host that is a path names the directory of the server's unix socket.
        self._unix_path = str(Path(host) / f".s.PGSQL.{port}") if host.startswith("/") else None
        self._tcp = None if self._unix_path else (host, int(port))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-fault-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._armed: str | None = None
        self._lock = threading.Lock()
        self.port = 0
        self.fired = threading.Event()  # set once a COMMIT went through and its reply was dropped

    # --- control (any thread) ---

    def start(self) -> PostgresFaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            connections = asyncio.all_tasks() - {asyncio.current_task()}
            for task in connections:
                task.cancel()
            # Each connection closes both its sockets and waits until they are closed (see `_serve`): a server
            # session left open would outlive the proxy, holding its locks, until the socket was collected.
            await asyncio.gather(*connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def url(self) -> str:
        """`database_url` through the proxy: the same role and database, over loopback TCP, without TLS."""
        parts = urlsplit(self.database_url)
        credentials = parts.netloc.rpartition("@")[0]
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port", "sslmode")]
        query += [("sslmode", "disable"), ("gssencmode", "disable")]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, quote_via=quote)))

    def arm(self, statement_contains: str) -> None:
        """Lose the reply to the next COMMIT of a transaction one of whose statements contains this text."""
        with self._lock:
            self.fired.clear()
            self._armed = statement_contains

    def _take(self, statements: list[str]) -> bool:
        with self._lock:
            if self._armed is None or not any(self._armed in s for s in statements):
                return False
            self._armed = None
            return True

    # --- the proxy (the loop's thread) ---

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix_path is not None:
                server_reader, server_writer = await asyncio.open_unix_connection(self._unix_path)
            else:
                assert self._tcp is not None
                server_reader, server_writer = await asyncio.open_connection(*self._tcp)
        except OSError:
            client_writer.close()
            return
        dropping = asyncio.Event()
        upstream = asyncio.ensure_future(self._client_to_server(client_reader, server_writer, dropping))
        downstream = asyncio.ensure_future(self._server_to_client(server_reader, client_writer, dropping))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is stopping: end quietly (asyncio logs a connection handler that ends cancelled)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            for writer in (client_writer, server_writer):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    writer.close()
                    await writer.wait_closed()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dropping: asyncio.Event
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # the startup phase: untyped messages (length, then a request code)
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                writer.write(head + await reader.readexactly(length - 8))
                await writer.drain()
                if code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                    break
            statements: list[str] = []
            while True:  # typed messages: a type byte, then a length that counts itself
                head = await reader.readexactly(5)
                body = await reader.readexactly(struct.unpack("!i", head[1:])[0] - 4)
                if head[:1] == b"Q":
                    sql = body.rstrip(b"\0").decode("utf-8", "replace").strip().rstrip(";").strip()
                    keyword = sql.split(None, 1)[0].upper() if sql else ""
                    if keyword in ("COMMIT", "END") and self._take(statements):
                        dropping.set()  # before the server can answer: the reply must not reach the client
                    if keyword in ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"):
                        statements = []
                    else:
                        statements.append(sql)
                writer.write(head + body)
                await writer.drain()
                if dropping.is_set():
                    await asyncio.sleep(3600)  # the other side ends the connection once the server has answered

    async def _server_to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dropping: asyncio.Event
    ) -> None:
        # The client sends COMMIT only once it has every earlier reply, and `dropping` is set before COMMIT goes
        # out, so whatever arrives while dropping is the commit's reply, from a message boundary on.
        dropped = b""
        with contextlib.suppress(ConnectionError):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                if not dropping.is_set():
                    writer.write(chunk)
                    await writer.drain()
                    continue
                dropped += chunk
                if _has_ready_for_query(dropped):  # the commit is done: hang up without a word
                    self.fired.set()
                    return


def _has_ready_for_query(data: bytes) -> bool:
    offset = 0
    while offset + 5 <= len(data):
        if data[offset : offset + 1] == b"Z":
            return True
        offset += 1 + struct.unpack("!i", data[offset + 1 : offset + 5])[0]
    return False


@contextmanager
def postgres_fault_proxy(database_url: str) -> Iterator[PostgresFaultProxy]:
    proxy = PostgresFaultProxy(database_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()
