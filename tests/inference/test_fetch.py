"""The model manifest and the resumable, checksum-verified fetcher, against a local HTTP server on 127.0.0.1.

The server (`FileServer`) serves generated payloads and can be told, per path, to drop the connection after N
bytes, to ignore `Range`, to serve wrong bytes, to answer a sequence of error statuses first, or to redirect.
It records every request (path, Range header) and counts the body bytes it sent."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from inference.errors import ChecksumMismatch, DownloadError, ModelNotFound
from inference.models import (
    ENHANCER_FILE,
    GFPGAN_LICENCE,
    INSIGHTFACE_LICENCE,
    OPTIONAL_MODELS,
    REAL_MODELS,
    ManifestError,
    ModelFile,
    fetch_models,
    load_manifest,
    model_to_mapping,
    require_models,
    verify_models,
    write_demo_models,
)

SIZE = 300_000  # bytes per payload


def payload(seed: int, size: int = SIZE) -> bytes:
    return hashlib.shake_256(f"facemint-fetch-test-{seed}".encode()).digest(size)


# --- the server -------------------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    drop_after: list[int] = field(default_factory=list)  # one entry per request: body bytes before hanging up
    statuses: list[int] = field(default_factory=list)  # answered (with a small body) before serving normally
    ignore_range: bool = False
    wrong_bytes: bool = False
    redirect_to: str | None = None
    no_length: bool = False  # no Content-Length: the body ends when the connection closes


@dataclass
class Request:
    path: str
    range: str | None


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.requests: list[Request] = []
        self.body_bytes_sent = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, name: str, data: bytes, **behaviour: Any) -> ModelFile:
        self.files[f"/{name}"] = data
        self.behaviour[f"/{name}"] = Behaviour(**behaviour)
        return ModelFile(
            name=name.split(".")[0],
            file=name,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            url=f"{self.base}/{name}",
            licence="test licence: non-commercial research only",
        )

    def ranges(self, name: str) -> list[str | None]:
        return [request.range for request in self.requests if request.path == f"/{name}"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append(Request(self.path, self.headers.get("Range")))
                    behaviour = server.behaviour.get(self.path, Behaviour())
                    status = behaviour.statuses.pop(0) if behaviour.statuses else None
                    drop = behaviour.drop_after.pop(0) if behaviour.drop_after else None
                if behaviour.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", behaviour.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None or status is not None:
                    self._small(status or 404)
                    return
                if behaviour.wrong_bytes:
                    data = bytes(b ^ 0x5A for b in data[:1000]) + data[1000:]
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and not behaviour.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/octet-stream")
                if behaviour.no_length:
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if drop is not None:
                    body = body[:drop]
                    self.close_connection = True
                try:
                    for offset in range(0, len(body), 16_384):
                        self.wfile.write(body[offset : offset + 16_384])
                        with server.lock:
                            server.body_bytes_sent += len(body[offset : offset + 16_384])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _small(self, status: int) -> None:
                body = f"status {status}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    file_server = FileServer()
    file_server.thread.start()
    try:
        yield file_server
    finally:
        file_server.httpd.shutdown()
        file_server.httpd.server_close()


FAST: dict[str, Any] = {"timeout": 5.0, "backoff": 0.0}


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".part"))


# --- fetching ---------------------------------------------------------------------------------------------------


def test_a_fresh_download_is_verified_and_lands_atomically(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    data = payload(1)
    model = server.add("det.onnx", data)
    calls: list[tuple[str, int, int]] = []
    with caplog.at_level(logging.INFO, logger="inference.models.fetch"):
        paths = fetch_models([model], tmp_path / "models", progress=lambda *call: calls.append(call), **FAST)
    assert paths == [tmp_path / "models" / "det.onnx"]
    assert paths[0].read_bytes() == data
    assert leftovers(tmp_path / "models") == []
    assert server.ranges("det.onnx") == [None]
    assert calls[0] == ("det.onnx", 0, SIZE)
    assert calls[-1] == ("det.onnx", SIZE, SIZE)
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)
    licence_lines = [r.getMessage() for r in caplog.records if "non-commercial research only" in r.getMessage()]
    assert len(licence_lines) == 1
    assert "det.onnx" in licence_lines[0]
    assert capsys.readouterr().out == ""  # the library prints nothing


def test_an_interrupted_download_resumes_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    data = payload(2)
    model = server.add("rec.onnx", data, drop_after=[120_000])
    [path] = fetch_models([model], tmp_path, **FAST)
    assert path.read_bytes() == data
    assert server.ranges("rec.onnx") == [None, "bytes=120000-"]
    assert server.body_bytes_sent == SIZE  # one file's worth, not two
    assert leftovers(tmp_path) == []


def test_a_download_interrupted_on_every_try_keeps_its_part_for_the_next_call(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(3)
    model = server.add("swap.onnx", data, drop_after=[50_000, 50_000, 50_000])
    with pytest.raises(DownloadError) as info:
        fetch_models([model], tmp_path, retries=2, **FAST)
    assert info.value.extra["received"] == 150_000
    assert server.ranges("swap.onnx") == [None, "bytes=50000-", "bytes=100000-"]
    assert not (tmp_path / "swap.onnx").exists()
    assert (tmp_path / "swap.onnx.part").stat().st_size == 150_000

    [path] = fetch_models([model], tmp_path, **FAST)  # a later call picks up where the last one stopped
    assert path.read_bytes() == data
    assert server.ranges("swap.onnx")[-1] == "bytes=150000-"
    assert server.body_bytes_sent == SIZE
    assert leftovers(tmp_path) == []


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    data = payload(4)
    model = server.add("det.onnx", data, wrong_bytes=True)
    with pytest.raises(ChecksumMismatch) as info:
        fetch_models([model], tmp_path, **FAST)
    assert info.value.extra["expected"] == model.sha256
    assert info.value.extra["actual"] == hashlib.sha256(bytes(b ^ 0x5A for b in data[:1000]) + data[1000:]).hexdigest()
    assert not (tmp_path / "det.onnx").exists()
    assert leftovers(tmp_path) == []
    assert len(server.requests) == 1  # a checksum mismatch is not retried


def test_a_server_that_ignores_range_still_gives_a_correct_file(server: FileServer, tmp_path: Path) -> None:
    data = payload(5)
    model = server.add("det.onnx", data, ignore_range=True)
    (tmp_path / "det.onnx.part").write_bytes(data[:100_000])
    [path] = fetch_models([model], tmp_path, **FAST)
    assert path.read_bytes() == data  # restarted from zero, not appended
    assert server.ranges("det.onnx") == ["bytes=100000-"]
    assert leftovers(tmp_path) == []


def test_a_stale_corrupt_part_is_downloaded_again_from_zero(server: FileServer, tmp_path: Path) -> None:
    data = payload(6)
    model = server.add("det.onnx", data)
    (tmp_path / "det.onnx.part").write_bytes(b"\0" * 100_000)  # left by an earlier run, not what the server has
    [path] = fetch_models([model], tmp_path, **FAST)
    assert path.read_bytes() == data
    assert server.ranges("det.onnx") == ["bytes=100000-", None]


def test_a_stale_part_is_restarted_only_once(server: FileServer, tmp_path: Path) -> None:
    model = server.add("det.onnx", payload(6), wrong_bytes=True)
    (tmp_path / "det.onnx.part").write_bytes(b"\0" * 100_000)
    with pytest.raises(ChecksumMismatch):
        fetch_models([model], tmp_path, **FAST)
    assert server.ranges("det.onnx") == ["bytes=100000-", None]
    assert list(tmp_path.iterdir()) == []


def test_a_complete_part_is_verified_without_a_request(server: FileServer, tmp_path: Path) -> None:
    data = payload(7)
    model = server.add("det.onnx", data)
    (tmp_path / "det.onnx.part").write_bytes(data)
    [path] = fetch_models([model], tmp_path, **FAST)
    assert path.read_bytes() == data
    assert server.requests == []
    assert leftovers(tmp_path) == []


def test_a_part_holding_everything_the_server_has_but_too_short_is_refused(server: FileServer, tmp_path: Path) -> None:
    data = payload(8)
    model = dataclasses.replace(server.add("det.onnx", data), size=SIZE + 10)  # the manifest expects more
    (tmp_path / "det.onnx.part").write_bytes(data)
    with pytest.raises(DownloadError, match="manifest says 300010"):
        fetch_models([model], tmp_path, **FAST)
    assert server.ranges("det.onnx") == [f"bytes={SIZE}-"]  # answered 416 */300000
    assert not (tmp_path / "det.onnx").exists()
    assert leftovers(tmp_path) == []


def test_an_already_present_correct_file_is_skipped_without_a_request(server: FileServer, tmp_path: Path) -> None:
    data = payload(9)
    model = server.add("det.onnx", data)
    (tmp_path / "det.onnx").write_bytes(data)
    calls: list[tuple[str, int, int]] = []
    assert fetch_models([model], tmp_path, progress=lambda *call: calls.append(call), **FAST) == [tmp_path / "det.onnx"]
    assert server.requests == []
    assert calls == [("det.onnx", SIZE, SIZE)]


@pytest.mark.parametrize("corrupt", [b"x" * SIZE, b"short"], ids=["wrong-bytes", "wrong-size"])
def test_a_corrupt_present_file_is_downloaded_again(server: FileServer, tmp_path: Path, corrupt: bytes) -> None:
    data = payload(10)
    model = server.add("det.onnx", data)
    (tmp_path / "det.onnx").write_bytes(corrupt)
    [path] = fetch_models([model], tmp_path, **FAST)
    assert path.read_bytes() == data
    assert server.ranges("det.onnx") == [None]


def test_a_corrupt_present_file_is_not_left_behind_when_the_download_fails(server: FileServer, tmp_path: Path) -> None:
    model = server.add("det.onnx", payload(11), wrong_bytes=True)
    (tmp_path / "det.onnx").write_bytes(b"x" * SIZE)
    with pytest.raises(ChecksumMismatch):
        fetch_models([model], tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []  # a file at the final name is always a verified one


def test_not_found_is_a_download_error_without_retries(server: FileServer, tmp_path: Path) -> None:
    model = dataclasses.replace(server.add("det.onnx", payload(12)), url=f"{server.base}/missing.onnx")
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        fetch_models([model], tmp_path, **FAST)
    assert info.value.extra["http_status"] == 404
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_transient_server_errors_are_retried(server: FileServer, tmp_path: Path) -> None:
    data = payload(13)
    model = server.add("det.onnx", data, statuses=[500, 503])
    [path] = fetch_models([model], tmp_path, retries=3, **FAST)
    assert path.read_bytes() == data
    assert len(server.requests) == 3


def test_server_errors_beyond_the_retries_are_a_download_error(server: FileServer, tmp_path: Path) -> None:
    model = server.add("det.onnx", payload(14), statuses=[500, 502, 500])
    with pytest.raises(DownloadError, match="after 3 attempts: HTTP 500"):
        fetch_models([model], tmp_path, retries=2, **FAST)
    assert len(server.requests) == 3
    assert list(tmp_path.iterdir()) == []


def test_retries_back_off(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr("inference.models.fetch.time.sleep", delays.append)
    model = server.add("det.onnx", payload(15), statuses=[500, 500, 500])
    fetch_models([model], tmp_path, timeout=5.0, retries=3, backoff=0.5)
    assert delays == [0.5, 1.0, 2.0]


def test_a_size_that_differs_from_the_manifest_is_refused_at_once(server: FileServer, tmp_path: Path) -> None:
    data = payload(16)
    model = dataclasses.replace(server.add("det.onnx", data + b"extra"), sha256=hashlib.sha256(data).hexdigest())
    model = dataclasses.replace(model, size=SIZE)
    with pytest.raises(DownloadError, match="serves 300005 bytes"):
        fetch_models([model], tmp_path, **FAST)
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_without_content_length_a_short_body_is_resumed_and_a_long_one_refused(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(18)
    model = server.add("det.onnx", data, no_length=True, drop_after=[70_000])
    [path] = fetch_models([model], tmp_path, **FAST)  # the connection closes cleanly after 70,000 bytes
    assert path.read_bytes() == data
    assert server.ranges("det.onnx") == [None, "bytes=70000-"]

    longer = dataclasses.replace(server.add("rec.onnx", data + b"more", no_length=True), size=SIZE)
    longer = dataclasses.replace(longer, sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(DownloadError, match="serves more bytes"):
        fetch_models([longer], tmp_path, **FAST)
    assert not (tmp_path / "rec.onnx").exists()
    assert leftovers(tmp_path) == []


def test_a_connection_refused_is_retried_then_a_download_error(tmp_path: Path) -> None:
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens on this port any more
    model = ModelFile("detector", "det.onnx", "0" * 64, 10, f"http://127.0.0.1:{port}/det.onnx", "test")
    with pytest.raises(DownloadError, match="after 2 attempts"):
        fetch_models([model], tmp_path, retries=1, **FAST)


def test_redirects_are_followed(server: FileServer, tmp_path: Path) -> None:
    data = payload(17)
    target = server.add("det.onnx", data)
    model = dataclasses.replace(target, url=server.add("moved.onnx", b"-", redirect_to=target.url).url)
    [path] = fetch_models([model], tmp_path, **FAST)
    assert path.read_bytes() == data
    assert [request.path for request in server.requests] == ["/moved.onnx", "/det.onnx"]


def test_several_models_come_back_in_order(server: FileServer, tmp_path: Path) -> None:
    models = [server.add(name, payload(20 + i, 50_000 + i)) for i, name in enumerate(["a.onnx", "b.onnx", "c.onnx"])]
    assert fetch_models(models, tmp_path, **FAST) == [tmp_path / name for name in ["a.onnx", "b.onnx", "c.onnx"]]
    assert all((tmp_path / m.file).stat().st_size == m.size for m in models)
    with pytest.raises(ValueError, match="duplicate"):
        fetch_models([models[0], models[0]], tmp_path, **FAST)


def test_concurrent_fetches_into_one_directory_download_once(server: FileServer, tmp_path: Path) -> None:
    data = payload(30)
    model = server.add("det.onnx", data)
    results: list[list[Path]] = []
    threads = [threading.Thread(target=lambda: results.append(fetch_models([model], tmp_path, **FAST))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [[tmp_path / "det.onnx"]] * 2
    assert len(server.requests) == 1
    assert (tmp_path / "det.onnx").read_bytes() == data


# --- verifying --------------------------------------------------------------------------------------------------


def _model(file: str, data: bytes) -> ModelFile:
    return ModelFile("m", file, hashlib.sha256(data).hexdigest(), len(data), "https://example.invalid/" + file, "t")


def test_verify_models_reports_missing_wrong_size_wrong_hash_and_ok(tmp_path: Path) -> None:
    good, data = tmp_path / "ok.onnx", payload(40, 1000)
    good.write_bytes(data)
    (tmp_path / "short.onnx").write_bytes(data[:10])
    (tmp_path / "bad.onnx").write_bytes(bytes(1000))
    models = [_model(name, data) for name in ("ok.onnx", "missing.onnx", "short.onnx", "bad.onnx")]
    ok, missing, short, bad = verify_models(models, tmp_path)
    assert (ok.present, ok.size_ok, ok.sha256_ok, ok.is_demo, ok.ok) == (True, True, True, False, True)
    assert ok.sha256 == models[0].sha256
    assert ok.describe().endswith("ok")
    assert (missing.present, missing.size_ok, missing.sha256_ok, missing.ok) == (False, False, False, False)
    assert missing.describe().endswith("missing")
    assert (short.present, short.size_ok, short.sha256_ok, short.size, short.sha256) == (True, False, False, 10, None)
    assert (bad.present, bad.size_ok, bad.sha256_ok) == (True, True, False)
    assert bad.sha256 == hashlib.sha256(bytes(1000)).hexdigest()


def test_verify_models_recognises_demo_models(tmp_path: Path) -> None:
    write_demo_models(tmp_path, seed=0)
    results = verify_models(REAL_MODELS, tmp_path)
    assert [(r.present, r.is_demo, r.ok) for r in results] == [(True, True, False)] * 3
    assert all("demo model" in r.describe() for r in results)
    with pytest.raises(ChecksumMismatch, match="detector model does not match"):
        require_models(REAL_MODELS, tmp_path)
    assert require_models(REAL_MODELS, tmp_path, allow_demo=True) == [tmp_path / m.file for m in REAL_MODELS]


def test_require_models_names_the_missing_file(tmp_path: Path) -> None:
    data = payload(41, 100)
    (tmp_path / "a.onnx").write_bytes(data)
    assert require_models([_model("a.onnx", data)], tmp_path) == [tmp_path / "a.onnx"]
    with pytest.raises(ModelNotFound, match="b.onnx"):
        require_models([_model("a.onnx", data), _model("b.onnx", data)], tmp_path)


# --- the manifest -----------------------------------------------------------------------------------------------


def test_the_real_manifest_is_well_formed_and_says_non_commercial() -> None:
    assert [(m.name, m.file) for m in REAL_MODELS] == [
        ("detector", "det_10g.onnx"),
        ("recognizer", "w600k_r50.onnx"),
        ("swapper", "inswapper_128.onnx"),
    ]
    assert all(m.url.startswith("https://") and m.url.endswith("/" + m.file) for m in REAL_MODELS)
    assert all(m.licence == INSIGHTFACE_LICENCE and "non-commercial research" in m.licence for m in REAL_MODELS)
    assert [m.size for m in REAL_MODELS] == [16_923_827, 174_383_860, 554_253_681]


def test_the_enhancer_is_an_optional_model_with_its_own_licence() -> None:
    [enhancer] = OPTIONAL_MODELS
    assert (enhancer.name, enhancer.file) == ("enhancer", ENHANCER_FILE)
    assert enhancer.file not in {m.file for m in REAL_MODELS}  # the engine runs without it
    assert enhancer.url == (
        "https://github.com/facefusion/facefusion-assets/releases/download/models-3.0.0/gfpgan_1.4.onnx"
    )
    assert (enhancer.size, enhancer.sha256[:8]) == (340_299_087, "accc4757")
    assert enhancer.licence == GFPGAN_LICENCE
    assert "non-commercial" in enhancer.licence
    assert "weights" in enhancer.licence


def test_verify_and_require_the_enhancer_next_to_the_real_models(tmp_path: Path) -> None:
    write_demo_models(tmp_path, seed=0)
    [result] = verify_models(OPTIONAL_MODELS, tmp_path)
    assert (result.present, result.is_demo, result.ok) == (True, True, False)
    assert require_models(OPTIONAL_MODELS, tmp_path, allow_demo=True) == [tmp_path / ENHANCER_FILE]
    (tmp_path / ENHANCER_FILE).unlink()
    [missing] = verify_models(OPTIONAL_MODELS, tmp_path)
    assert missing.describe().endswith("missing")
    assert all(r.is_demo for r in verify_models(REAL_MODELS, tmp_path))  # the required ones do not care


def test_load_manifest_reads_json(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps([model_to_mapping(m) for m in REAL_MODELS]))
    assert load_manifest(path) == REAL_MODELS
    entry = dict(model_to_mapping(REAL_MODELS[0]), sha256=REAL_MODELS[0].sha256.upper(), _source="our mirror")
    path.write_text(json.dumps({"models": [entry]}))
    assert load_manifest(str(path)) == REAL_MODELS[:1]


def _entry(**changes: Any) -> dict[str, Any]:
    entry = model_to_mapping(REAL_MODELS[0])
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"models": {}}), "expected a list"),
        (json.dumps(["det_10g.onnx"]), "must be an object"),
        (json.dumps([_entry(sha256=None)]), "missing sha256"),
        (json.dumps([_entry(mirror="x")]), "unknown mirror"),
        (json.dumps([_entry(sha256="abc")]), "64 lowercase hex"),
        (json.dumps([_entry(size=-1)]), "positive integer"),
        (json.dumps([_entry(size="16923827")]), "positive integer"),
        (json.dumps([_entry(size=True)]), "positive integer"),
        (json.dumps([_entry(file="../det_10g.onnx")]), "bare file name"),
        (json.dumps([_entry(file="models\\det_10g.onnx")]), "bare file name"),
        (json.dumps([_entry(url="ftp://example.com/det_10g.onnx")]), "http"),
        (json.dumps([_entry(url="det_10g.onnx")]), "http"),
        (json.dumps([_entry(licence="")]), "licence must be a non-empty string"),
        (json.dumps([_entry(), _entry(name="other")]), "duplicate file"),
        (json.dumps([_entry(), _entry(file="other.onnx")]), "duplicate name"),
    ],
)
def test_load_manifest_rejects_malformed_entries(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(document)
    with pytest.raises(ManifestError, match=re.escape(message)):
        load_manifest(path)
