"""Helpers for the SDK tests (no fixtures here): a live `facemint serve` process that can be stopped and started
again on the same port, a real `facemint worker` process, and a TCP proxy that loses one answer (the request
reaches the API and is applied; its response never reaches the client)."""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from facemint.config import Settings
from tests.jobs.conftest import worker_env

ROOT = Path(__file__).resolve().parents[2]
# What the live API is started with besides the test servers: generous rate limits (the tests are not about
# them), and a low four-eyes threshold so that a recharge above it is held for approval.
APPROVAL_THRESHOLD = 1000
SERVER_OVERRIDES = {
    "FACEMINT_PLAN_LIMITS": '{"free": {"key": "100000/minute", "tenant": "100000/minute"}}',
    "FACEMINT_APPROVAL_THRESHOLD_AMOUNT": str(APPROVAL_THRESHOLD),
    "FACEMINT_WEBHOOK_BACKOFF_SECONDS": "[0.2, 0.2]",
    "FACEMINT_WEBHOOK_MAX_ATTEMPTS": "3",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


class LiveApi:
    """`facemint serve` on loopback, on one port for its whole life: `stop()` and `start()` restart it there."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / "api.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, timeout: float = 60.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "facemint.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=worker_env(self.settings, **SERVER_OVERRIDES),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise AssertionError(f"facemint serve exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"facemint serve did not answer within {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_worker(settings: Settings, log_dir: Path) -> subprocess.Popen[bytes]:
    """A real `facemint worker` on the live API's queue, storage and webhook settings."""
    with (log_dir / "worker.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "facemint.cli.main", "worker"],
            env=worker_env(settings, **SERVER_OVERRIDES),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    # Killed, not stopped: a graceful stop waits for the worker's background threads, and nothing here needs it.
    process.kill()
    process.wait(timeout=15)


class LosingProxy:
    """A TCP proxy to `upstream_port` that, while `lose` is above zero, forwards a connection's request, waits
    for the upstream's answer to start, then closes both sides without passing the answer on: a request the API
    applied whose answer the client never saw. Every other connection is forwarded both ways."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lose = 0
        self.lost = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="losing-proxy").start()

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                losing = self.lose > 0
                self.lose -= int(losing)
            threading.Thread(target=self._pump, args=(client, losing), daemon=True).start()

    def _pump(self, client: socket.socket, losing: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is upstream and losing:
                        with self._lock:
                            self.lost += 1
                        return  # the answer has started: the request was applied; drop it on the floor
                    (upstream if source is client else client).sendall(data)
        except OSError:
            return
        finally:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
