"""Processes the benchmarks watch: the API in its own process (`facemint serve`), and meters for resident
memory (RSS) and CPU time of a process tree (the API, Postgres with all its backends, this process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psutil
from common import JWT_SECRET, PEPPER, Servers
from sqlalchemy import Engine, text

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api_process(srv: Servers, *, workers: int = 1, **env_overrides: str) -> Iterator[tuple[str, psutil.Process]]:
    """`facemint serve` on 127.0.0.1:<free port> with `workers` processes; yields (base url, process)."""
    port = free_port()
    env = {
        **os.environ,
        "FACEMINT_DATABASE_URL": srv.database_url,
        "FACEMINT_REDIS_URL": srv.redis_url,
        "FACEMINT_JWT_SECRET": JWT_SECRET,
        "FACEMINT_API_KEY_PEPPER": PEPPER,
        "FACEMINT_HOST": "127.0.0.1",
        # Benchmarks measure throughput, not review or admission: they set their own four-eyes thresholds (the
        # rolling 24-hour total would hold the second of two large batches) and active-job caps.
        "FACEMINT_APPROVAL_THRESHOLD_AMOUNT": str(10**15),
        "FACEMINT_APPROVAL_THRESHOLD_BATCH_TOTAL": str(10**15),
        "FACEMINT_APPROVAL_THRESHOLD_DAILY_TOTAL": str(10**15),
        "FACEMINT_PLAN_MAX_ACTIVE_JOBS": '{"free": 1000000, "pro": 1000000, "enterprise": 1000000}',
        **env_overrides,
    }
    exe = Path(sys.executable).parent / "facemint"
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the API exited ({proc.returncode}):\n{log.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start within 60 s")
            time.sleep(0.2)
        yield base, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class RssSampler:
    """Samples the RSS of a process (and its children) every `interval` seconds; `peak` is the maximum."""

    def __init__(self, proc: psutil.Process, interval: float = 0.005) -> None:
        self.proc, self.interval = proc, interval
        self.peak = self.start = tree_rss(proc)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.proc))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.proc))


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants, including children that
    have exited and been reaped (their time moves into the parent's children_* counters)."""
    total = 0.0
    for n, p in enumerate([proc, *proc.children(recursive=True)]):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + (t.children_user + t.children_system if n == 0 else 0.0)
    return total


def postgres_root(engine: Engine) -> psutil.Process | None:
    """The postmaster of the benchmark's database when it runs on this machine (else None: a server elsewhere,
    or one whose processes this user cannot see)."""
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        root = psutil.Process(pid).parent()
        return root if root is not None and "postgres" in root.name() else None
    except psutil.Error:
        return None


class CpuMeter:
    """CPU seconds used between enter and exit by this process, the API process and Postgres (all backends)."""

    def __init__(self, **procs: psutil.Process | None) -> None:
        self.procs = {name: p for name, p in procs.items() if p is not None}
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: tree_cpu(p) for name, p in self.procs.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {name: tree_cpu(p) - self._start[name] for name, p in self.procs.items()}


def load() -> str:
    return "load average (1/5/15 min) " + " ".join(f"{x:.2f}" for x in os.getloadavg())
