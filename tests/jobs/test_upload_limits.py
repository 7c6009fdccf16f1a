"""No byte of an upload is read before its caller is authenticated and allowed to submit, and no body streams past
its route's limit. Measured on a real `uvicorn` process with a raw socket that keeps sending until the server
answers or hangs up: everything the server could have read is what the client got out (its own 64 KiB send
buffer and the server's receive buffer included), so that count bounds the server's reads from above. Nothing may
appear in the server's temporary directory or storage."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from facemint.auth.scopes import Scope
from facemint.config import Settings
from tests.conftest import make_settings
from tests.factories import bearer, create_user, issue_key
from tests.jobs.conftest import SOURCE, TARGET, Payer, counts, wait_for, worker_env

MB = 1024 * 1024
GB = 1024 * MB
CHUNK = 64 * 1024


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    tmp_dir: Path
    storage_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def files_written(self) -> list[Path]:
        return [p for root in (self.tmp_dir, self.storage_dir) for p in root.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def api_process(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`uvicorn` serving the app in a process of its own (one for the module), with 1 MiB images (a swap body of
    about 3 MiB)."""
    root = tmp_path_factory.mktemp("upload-limits")
    tmp_dir = root / "server-tmp"
    tmp_dir.mkdir()
    storage_dir = root / "server-storage"
    port = _free_port()
    settings = make_settings(database_url, redis_url, data_dir=root / "data")
    env = worker_env(
        settings,
        TMPDIR=str(tmp_dir),
        FACEMINT_STORAGE_DIR=str(storage_dir),
        FACEMINT_MAX_IMAGE_BYTES=str(MB),
        FACEMINT_PLAN_LIMITS='{"free": {"key": "100000/minute", "tenant": "100000/minute"}}',
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "facemint.app:create_app",
            "--factory",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    server = ServerProcess(process=process, port=port, tmp_dir=tmp_dir, storage_dir=storage_dir)
    try:
        wait_for(lambda: _answers(server.url), timeout=60, interval=0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def report(name: str, sent: int) -> None:
    print(f"\n[upload] {name}: the client got {sent:,} bytes out before the server answered")  # noqa: T201


@dataclass
class Upload:
    status: int | None
    body: bytes
    sent: int


def stream_upload(server: ServerProcess, headers: dict[str, str], *, total: int) -> Upload:
    """POST /v1/swaps with a chunked body of `total` bytes, sending until the server answers or hangs up."""
    head = [
        "POST /v1/swaps HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Content-Type: multipart/form-data; boundary=xyz",
        "Transfer-Encoding: chunked",
        "Idempotency-Key: upload-limit-test",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    # One file part that never ends: the multipart framing is valid, so only a limit can stop it.
    opening = b'--xyz\r\nContent-Disposition: form-data; name="source"; filename="s.png"\r\n\r\n' + b"\x89PNG"
    pending = f"{len(opening):x}\r\n".encode() + opening + b"\r\n"
    chunk = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
    sent = 0
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        conn.setblocking(False)
        deadline = time.monotonic() + 120
        while sent < total and time.monotonic() < deadline:
            try:
                part = conn.recv(65536)
                if not part:
                    break
                received += part
                if b"\r\n\r\n" in received:
                    break
            except BlockingIOError:
                pass
            if not pending:
                pending = chunk
            try:
                written = conn.send(pending)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += written
            pending = pending[written:]
        conn.setblocking(True)
        conn.settimeout(10)
        try:
            while b"\r\n\r\n" not in received:
                part = conn.recv(65536)
                if not part:
                    break
                received += part
        except (TimeoutError, ConnectionResetError):
            pass
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else None
    return Upload(status=status, body=received, sent=sent)


def test_an_unauthenticated_gigabyte_upload_is_refused_after_the_headers(api_process: ServerProcess) -> None:
    upload = stream_upload(api_process, {}, total=GB)
    read = upload.sent  # at most what the client got out
    assert upload.status == 401, upload.body[:300]
    report("unauthenticated 1 GiB upload", upload.sent)
    assert read < MB, f"the server read {read} bytes of an unauthenticated upload"
    assert upload.sent < GB  # the server hung up: the client could not push the gigabyte through
    assert api_process.files_written() == []


def test_a_key_without_the_swap_scope_is_refused_before_its_upload_is_read(
    api_process: ServerProcess, session: object, job_settings: Settings
) -> None:
    user = create_user(session)  # type: ignore[arg-type]
    key = issue_key(session, job_settings, user, scopes=[Scope.jobs_read])  # type: ignore[arg-type]
    upload = stream_upload(api_process, bearer(key), total=GB)
    read = upload.sent  # at most what the client got out
    assert upload.status == 403, upload.body[:300]
    report("1 GiB upload with a key lacking swaps:write", upload.sent)
    assert read < MB
    assert api_process.files_written() == []


def test_an_allowed_upload_past_the_limit_is_refused_as_it_streams(
    api_process: ServerProcess, make_payer: object
) -> None:
    payer: Payer = make_payer(tokens=5)  # type: ignore[operator]
    upload = stream_upload(api_process, payer.headers, total=GB)
    read = upload.sent  # at most what the client got out
    assert upload.status == 413, upload.body[:300]
    assert b"image_too_large" in upload.body or b"payload_too_large" in upload.body
    limit = 3 * MB + 64 * 1024
    report("allowed 1 GiB upload, 1 MiB images", upload.sent)
    assert read < limit + MB, f"read {read} bytes for a limit of {limit}"
    assert api_process.files_written() == []


def test_a_declared_length_past_the_limit_is_refused_before_reading(api_process: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", api_process.port), timeout=10) as conn:
        conn.sendall(
            f"POST /admin/v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {GB}\r\n\r\n".encode()
        )
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer


def test_every_route_limits_its_body(client_for_limits: httpx.Client) -> None:
    """A JSON route (default limit 1 MiB) refuses a chunked body that streams past it."""

    def body() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(40):
            yield b"a" * CHUNK
        yield b'"}'

    response = client_for_limits.post("/admin/v1/tenants", content=body(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert response.json()["max_bytes"] == 1024 * 1024


@pytest.fixture
def client_for_limits(api_process: ServerProcess, session: object, job_settings: Settings) -> Iterator[httpx.Client]:
    from facemint.users.orm import Role

    admin = create_user(session, role=Role.platform_admin)  # type: ignore[arg-type]
    key = issue_key(session, job_settings, admin)  # type: ignore[arg-type]
    with httpx.Client(base_url=api_process.url, headers=bearer(key), timeout=30) as client:
        yield client


def test_unknown_fields_on_a_swap_are_refused_and_hold_nothing(
    job_client: object, make_payer: object, engine: object
) -> None:
    payer: Payer = make_payer(tokens=5)  # type: ignore[operator]
    for field, value in (
        ("price", "0"),
        ("units", "0"),
        ("tenant_id", "1"),
        ("user_id", "1"),
        ("account_id", "1"),
        ("tokens_per_unit", "0"),
    ):
        response = job_client.post(  # type: ignore[attr-defined]
            "/v1/swaps",
            headers={**payer.headers, "Idempotency-Key": os.urandom(8).hex()},
            files={"source": ("s.png", SOURCE, "image/png"), "target": ("t.png", TARGET, "image/png")},
            data={field: value},
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "unknown_field"
    assert counts(engine, payer.user_id) == (0, 0)  # type: ignore[arg-type]
