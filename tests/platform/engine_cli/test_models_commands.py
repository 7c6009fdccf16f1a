"""`facemint models demo|verify|fetch` and `facemint doctor`."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from inference.models import (
    DETECTOR_FILE,
    ENHANCER_FILE,
    RECOGNIZER_FILE,
    SWAPPER_FILE,
    write_demo_models,
)
from tests.platform.engine_cli.conftest import (
    MODEL_FILES,
    manifest_for,
    sha256,
)

# insightface's face_align calls an API scikit-image 0.26 deprecates, on every alignment.
pytestmark = pytest.mark.filterwarnings("ignore:.*estimate.*is deprecated:FutureWarning")

# --- models demo, doctor ----------------------------------------------------------------------------------------


def test_models_demo_writes_the_four_files(run: Any, tmp_path: Path) -> None:
    result = run("models", "demo", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    written = (*MODEL_FILES, ENHANCER_FILE)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(written)
    assert result.stdout.splitlines() == [str(tmp_path / "demo" / file) for file in written]
    assert "placeholders" in result.stderr


def test_doctor_on_demo_models_loads_them(run: Any, models: Path) -> None:
    result = run("doctor", "--models", models, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    for file in MODEL_FILES:
        size = (models / file).stat().st_size
        assert f"  {file}: {size} bytes, sha256 {sha256(models / file)}, demo model" in result.stdout.splitlines()
    assert "engine: loaded demo models on CPUExecutionProvider" in result.stdout
    assert "PROBLEM" not in result.stdout
    assert result.stdout.splitlines()[-1] == "ok"


def test_doctor_with_the_default_provider_loads_the_demo_models(run: Any, models: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("auto picks CUDA here")
    result = run("doctor", "--models", models)
    assert result.exit_code == 0, result.output
    assert "engine: loaded demo models on CPUExecutionProvider" in result.stdout


def test_doctor_require_real_refuses_demo_models(run: Any, models: Path) -> None:
    result = run("doctor", "--models", models, "--provider", "cpu", "--require-real")
    assert result.exit_code == 1, result.output
    for file in MODEL_FILES:
        assert f"PROBLEM {file} is a demo model" in result.stdout


def test_doctor_on_an_empty_directory_names_each_missing_file(run: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("doctor", "--models", tmp_path / "empty", "--provider", "cpu")
    assert result.exit_code == 1, result.output
    for file in MODEL_FILES:
        assert f"  {file}: missing" in result.stdout
        assert f"PROBLEM {file} is missing" in result.stdout
    assert "engine: loaded" not in result.stdout
    assert result.stdout.splitlines()[-1] == "3 problem(s)"


def test_doctor_defaults_to_the_models_under_the_data_dir(run: Any, tmp_path: Path) -> None:
    result = run("doctor", "--provider", "cpu")
    assert result.exit_code == 1, result.output
    assert f"models: {tmp_path / 'data' / 'models'}" in result.stdout


def test_doctor_with_cuda_on_a_cpu_machine_names_provider_unavailable(run: Any, models: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    result = run("doctor", "--models", models, "--provider", "cuda")
    assert result.exit_code == 1, result.output
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM ")]
    assert len(problems) == 1, result.stdout
    assert problems[0].startswith("PROBLEM provider_unavailable: cuda was asked for")


def test_doctor_reports_a_corrupt_model_file_as_a_problem(run: Any, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    write_demo_models(corrupt)
    (corrupt / DETECTOR_FILE).write_bytes(b"not an onnx model")
    result = run("doctor", "--models", corrupt, "--provider", "cpu")
    assert result.exit_code == 1, result.output
    assert any(line.startswith(f"PROBLEM {DETECTOR_FILE}") for line in result.stdout.splitlines())


# --- models verify ----------------------------------------------------------------------------------------------


def test_models_verify_refuses_demo_models_against_the_real_manifest(run: Any, models: Path) -> None:
    result = run("models", "verify", "--dir", models)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, file in zip(lines, MODEL_FILES, strict=True):
        assert line.startswith(f"{models / file}: ")
        assert "expected" in line
        assert line.endswith("(a Facemint demo model)")


def test_models_verify_with_enhancer_checks_the_optional_enhancer_too(run: Any, models: Path, tmp_path: Path) -> None:
    result = run("models", "verify", "--dir", models, "--enhancer")
    assert result.exit_code == 1, result.output
    *required, enhancer = result.stdout.splitlines()
    assert len(required) == 3
    assert enhancer.startswith(f"{models / ENHANCER_FILE}: ")
    assert enhancer.endswith("(a Facemint demo model)")
    # A manifest that already lists the enhancer is not given it twice.
    manifest = manifest_for(models, tmp_path / "manifest.json", with_enhancer=True)
    listed = run("models", "verify", "--dir", models, "--manifest", manifest, "--enhancer")
    assert listed.exit_code == 0, listed.output
    files = (*MODEL_FILES, ENHANCER_FILE)
    assert listed.stdout.splitlines() == [f"{models / file}: ok (a Facemint demo model)" for file in files]


def test_models_verify_accepts_files_matching_their_manifest(run: Any, models: Path, tmp_path: Path) -> None:
    manifest = manifest_for(models, tmp_path / "manifest.json")
    result = run("models", "verify", "--dir", models, "--manifest", manifest)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{models / file}: ok (a Facemint demo model)" for file in MODEL_FILES]


def test_models_verify_names_a_wrong_digest_and_a_missing_file(run: Any, models: Path, tmp_path: Path) -> None:
    manifest = manifest_for(models, tmp_path / "manifest.json", **{RECOGNIZER_FILE: "0" * 64})
    partial = tmp_path / "partial"
    partial.mkdir()
    for file in (DETECTOR_FILE, RECOGNIZER_FILE):
        (partial / file).write_bytes((models / file).read_bytes())
    result = run("models", "verify", "--dir", partial, "--manifest", manifest)
    assert result.exit_code == 1, result.output
    detector, recognizer, swapper = result.stdout.splitlines()
    assert detector == f"{partial / DETECTOR_FILE}: ok (a Facemint demo model)"
    digest = sha256(models / RECOGNIZER_FILE)
    assert recognizer.startswith(f"{partial / RECOGNIZER_FILE}: sha256 {digest}, expected 000")
    assert swapper == f"{partial / SWAPPER_FILE}: missing"


@pytest.mark.parametrize("command", ["verify", "fetch"])
def test_an_invalid_manifest_fails_with_one_error_line(run: Any, models: Path, tmp_path: Path, command: str) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{not json")
    where = ["--dir", models] if command == "verify" else ["--dest", tmp_path / "dest"]
    result = run("models", command, *where, "--manifest", manifest)
    assert result.exit_code != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")], result.stderr


# --- models fetch -----------------------------------------------------------------------------------------------


class FileServer:
    """http.server on 127.0.0.1 serving a directory, counting the requests it gets."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(models: Path) -> Iterator[FileServer]:
    file_server = FileServer(models)
    yield file_server
    file_server.close()


def test_models_fetch_downloads_and_verifies_from_the_manifest(
    run: Any, models: Path, server: FileServer, tmp_path: Path
) -> None:
    manifest = manifest_for(models, tmp_path / "manifest.json", base_url=server.base)
    dest = tmp_path / "dest"
    result = run("models", "fetch", "--dest", dest, "--manifest", manifest)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(dest / file) for file in MODEL_FILES]
    assert result.stderr.startswith("licence: ")
    assert sorted(server.requests) == sorted(f"/{file}" for file in MODEL_FILES)
    assert sorted(p.name for p in dest.iterdir()) == sorted(MODEL_FILES)  # no .part left
    for file in MODEL_FILES:
        assert (dest / file).read_bytes() == (models / file).read_bytes()

    verified = run("models", "verify", "--dir", dest, "--manifest", manifest)
    assert verified.exit_code == 0, verified.output

    again = run("models", "fetch", "--dest", dest, "--manifest", manifest)
    assert again.exit_code == 0, again.output
    assert len(server.requests) == 3  # files already present and verified: no request

    doctor = run("doctor", "--models", dest, "--provider", "cpu")
    assert doctor.exit_code == 0, doctor.output


def test_models_fetch_refuses_a_checksum_mismatch_and_leaves_no_file(
    run: Any, models: Path, server: FileServer, tmp_path: Path
) -> None:
    manifest = manifest_for(models, tmp_path / "manifest.json", base_url=server.base, **{SWAPPER_FILE: "ab" * 32})
    dest = tmp_path / "dest"
    result = run("models", "fetch", "--dest", dest, "--manifest", manifest)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: checksum_mismatch: ")
    assert SWAPPER_FILE in errors[0]
    assert "Traceback" not in result.stderr
    assert not (dest / SWAPPER_FILE).exists()
    assert not (dest / (SWAPPER_FILE + ".part")).exists()
    assert (dest / DETECTOR_FILE).read_bytes() == (models / DETECTOR_FILE).read_bytes()  # the ones before it landed


def test_models_fetch_reports_a_missing_file_on_the_server(
    run: Any, models: Path, server: FileServer, tmp_path: Path
) -> None:
    manifest = manifest_for(models, tmp_path / "manifest.json", base_url=server.base + "/gone")
    dest = tmp_path / "dest"
    result = run("models", "fetch", "--dest", dest, "--manifest", manifest)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: download_failed: HTTP 404")
    assert not (dest / DETECTOR_FILE).exists()
    assert result.stdout == ""
