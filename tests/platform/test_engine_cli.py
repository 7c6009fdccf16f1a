"""The engine's command line (`facemint models demo|verify|fetch`, `facemint doctor`, `facemint swap`) in-process
through click's CliRunner, on demo models. No Postgres or Redis: FACEMINT_DATA_DIR points at a temporary
directory, and the only network is a file server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result

from facemint.cli.main import cli
from facemint.config import get_settings
from inference.models import (
    DETECTOR_FILE,
    ENHANCER_FILE,
    RECOGNIZER_FILE,
    SWAPPER_FILE,
    draw_demo_face,
    write_demo_models,
)
from inference.video import probe_video
from tests.inference.video_helpers import make_clip

MODEL_FILES = (DETECTOR_FILE, RECOGNIZER_FILE, SWAPPER_FILE)
BACKGROUND = 30  # a dark grey: the demo detector's background rule (channel mean <= 85)
LEFT_FACE = (40, 100, 150)  # x, y, side: index 0 (faces count from the left)
RIGHT_FACE = (400, 150, 150)  # index 1

# insightface's face_align calls an API scikit-image 0.26 deprecates, on every alignment.
pytestmark = pytest.mark.filterwarnings("ignore:.*estimate.*is deprecated:FutureWarning")


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str | None]]:
    """The environment a CLI run sees: everything under tmp_path, no engine settings from outside, no proxy."""
    yield {
        "FACEMINT_ENV": "dev",
        "FACEMINT_DATA_DIR": str(tmp_path / "data"),
        "FACEMINT_MODELS_DIR": None,
        "FACEMINT_ENGINE_PROVIDER": None,
        "FACEMINT_ENGINE_DET_SIZE": None,
        "FACEMINT_MAX_IMAGE_BYTES": None,
        "FACEMINT_MAX_IMAGE_PIXELS": None,
        "FACEMINT_VIDEO_CRF": None,
        "HTTP_PROXY": None,
        "HTTPS_PROXY": None,
        "ALL_PROXY": None,
        "http_proxy": None,
        "https_proxy": None,
        "all_proxy": None,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    get_settings.cache_clear()  # the CLI cached settings read from this environment


@pytest.fixture
def run(env: dict[str, str | None]) -> Any:
    """`run(*args)`: the CLI in-process; stdout and stderr apart (`result.stdout`, `result.stderr`)."""

    def invoke(*args: object) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    write_demo_models(directory)
    return directory


def _canvas(width: int = 640, height: int = 480) -> np.ndarray:
    return np.full((height, width, 3), BACKGROUND, dtype=np.uint8)


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """source (identity 1), target (identities 2 left and 3 right, PNG so that untouched pixels stay exact),
    reference (identity 3 alone), a face-less image, a truncated JPEG and a text file."""
    directory = tmp_path_factory.mktemp("images")
    source = _canvas()
    draw_demo_face(source, 200, 120, 200, identity=1)
    target = _canvas()
    draw_demo_face(target, *LEFT_FACE[:2], LEFT_FACE[2], identity=2)
    draw_demo_face(target, *RIGHT_FACE[:2], RIGHT_FACE[2], identity=3)
    reference = _canvas()
    draw_demo_face(reference, 220, 140, 180, identity=3)
    target_jpeg = cv2.imencode(".jpg", target, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    paths = {
        "source": _write(directory / "source.png", source),
        "target": _write(directory / "target.png", target),
        "reference": _write(directory / "reference.png", reference),
        "noface": _write(directory / "noface.png", _canvas()),
        "target_jpeg": directory / "target.jpg",
        "truncated": directory / "truncated.jpg",
        "text": directory / "notes.txt",
    }
    paths["target_jpeg"].write_bytes(target_jpeg)
    paths["truncated"].write_bytes(target_jpeg[: len(target_jpeg) // 2])
    paths["text"].write_text("not an image\n")
    return paths


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_for(
    directory: Path,
    path: Path,
    base_url: str = "http://127.0.0.1:9",
    *,
    with_enhancer: bool = False,
    **sha_overrides: str,
) -> Path:
    """A manifest (JSON) describing the files in `directory` as they are (real sizes and digests)."""
    roles = [("detector", DETECTOR_FILE), ("recognizer", RECOGNIZER_FILE), ("swapper", SWAPPER_FILE)]
    entries = [
        {
            "name": name,
            "file": file,
            "sha256": sha_overrides.get(file, sha256(directory / file)),
            "size": (directory / file).stat().st_size,
            "url": f"{base_url}/{file}",
            "licence": "test files",
        }
        for name, file in roles + ([("enhancer", ENHANCER_FILE)] if with_enhancer else [])
    ]
    path.write_text(json.dumps({"models": entries}))
    return path


def assert_one_error(result: Result, code: str) -> None:
    """Non-zero exit, nothing on stdout, exactly one line on stderr: `error: <code>...`, no traceback."""
    assert result.exit_code != 0, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert code in lines[0]
    assert "Traceback" not in result.stderr


def face_changed(before: np.ndarray, after: np.ndarray, face: tuple[int, int, int]) -> bool:
    x, y, side = face
    return bool(np.any(before[y : y + side, x : x + side] != after[y : y + side, x : x + side]))


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


# --- swap -------------------------------------------------------------------------------------------------------


def swap(run: Any, images: dict[str, Path], models: Path, output: Path, *extra: object) -> Result:
    return run("swap", images["source"], images["target"], "-o", output, "--models", models, *extra)


def test_swap_writes_a_valid_image_and_reports_on_stderr(
    run: Any, images: dict[str, Path], models: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.png"
    result = swap(run, images, models, output, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{output}: swapped 1 of 2 face(s) in ")
    assert line.endswith("on CPUExecutionProvider (demo models)")
    before = cv2.imread(str(images["target"]))
    after = cv2.imread(str(output))
    assert after is not None
    assert after.shape == before.shape
    # largest: the two faces are the same size, so one of them changed and the other did not
    assert face_changed(before, after, LEFT_FACE) != face_changed(before, after, RIGHT_FACE)


@pytest.mark.parametrize(
    ("faces", "swapped", "left", "right"),
    [("all", 2, True, True), ("index:0", 1, True, False), ("index:1", 1, False, True), ("index:1,0", 2, True, True)],
)
def test_swap_face_selections(
    run: Any,
    images: dict[str, Path],
    models: Path,
    tmp_path: Path,
    faces: str,
    swapped: int,
    left: bool,
    right: bool,
) -> None:
    output = tmp_path / "out.png"
    result = swap(run, images, models, output, "--faces", faces, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"swapped {swapped} of 2 face(s)" in result.stderr
    before, after = cv2.imread(str(images["target"])), cv2.imread(str(output))
    assert face_changed(before, after, LEFT_FACE) is left
    assert face_changed(before, after, RIGHT_FACE) is right


def test_swap_reference_picks_the_face_like_the_reference(
    run: Any, images: dict[str, Path], models: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.png"
    result = swap(
        run, images, models, output, "--faces", "reference", "--reference", images["reference"], "--provider", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "swapped 1 of 2 face(s)" in result.stderr
    before, after = cv2.imread(str(images["target"])), cv2.imread(str(output))
    assert not face_changed(before, after, LEFT_FACE)
    assert face_changed(before, after, RIGHT_FACE)  # identity 3, the reference's


@pytest.mark.parametrize(
    ("name", "magic"), [("out.jpg", b"\xff\xd8\xff"), ("out.webp", b"RIFF"), ("out.png", b"\x89PNG")]
)
def test_swap_output_format_follows_the_file_name(
    run: Any, images: dict[str, Path], models: Path, tmp_path: Path, name: str, magic: bytes
) -> None:
    output = tmp_path / name
    result = run("swap", images["source"], images["target_jpeg"], "-o", output, "--models", models, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    data = output.read_bytes()
    assert data.startswith(magic)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == (480, 640, 3)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("truncated target", "invalid_image"),
        ("text file as target", "unsupported_image_format"),
        ("no face in source", "no_source_face"),
        ("no face in target", "no_target_face"),
        ("no face in reference", "no_reference_face"),
        ("reference not similar", "no_matching_face"),
        ("reference mode without reference", "invalid_face_selection"),
        ("bogus selection", "invalid_face_selection"),
        ("index out of range", "invalid_face_selection"),
        ("missing source", "cannot read"),
        ("missing target", "cannot read"),
        ("missing reference", "cannot read"),
        ("bad output format", "invalid_output_format"),
        ("missing models dir", "model_not_found"),
        ("default models dir is empty", "model_not_found"),
    ],
)
def test_swap_bad_inputs_fail_with_one_error_line(
    run: Any, images: dict[str, Path], models: Path, tmp_path: Path, case: str, code: str
) -> None:
    source, target = images["source"], images["target"]
    extra: list[object] = ["--models", models, "--provider", "cpu"]
    if case == "truncated target":
        target = images["truncated"]
    elif case == "text file as target":
        target = images["text"]
    elif case == "no face in source":
        source = images["noface"]
    elif case == "no face in target":
        target = images["noface"]
    elif case == "no face in reference":
        extra += ["--faces", "reference", "--reference", images["noface"]]
    elif case == "reference not similar":
        extra += ["--faces", "reference", "--reference", images["source"]]
    elif case == "reference mode without reference":
        extra += ["--faces", "reference"]
    elif case == "bogus selection":
        extra += ["--faces", "bogus"]
    elif case == "index out of range":
        extra += ["--faces", "index:5"]
    elif case == "missing source":
        source = tmp_path / "nowhere.png"
    elif case == "missing target":
        target = tmp_path / "nowhere.png"
    elif case == "missing reference":
        extra += ["--faces", "reference", "--reference", tmp_path / "nowhere.png"]
    elif case == "bad output format":
        extra += ["--format", "bmp"]
    elif case == "missing models dir":
        extra = ["--models", tmp_path / "no-models", "--provider", "cpu"]
    elif case == "default models dir is empty":
        extra = ["--provider", "cpu"]
    output = tmp_path / "out.png"
    result = run("swap", source, target, "-o", output, *extra)
    assert_one_error(result, code)
    assert not output.exists()
    if case == "index out of range":
        assert "face index 5 is out of range: the target has 2 face(s)" in result.stderr
    if case == "missing source":
        assert "nowhere.png" in result.stderr
    if case == "default models dir is empty":
        assert str(tmp_path / "data" / "models") in result.stderr


def test_swap_to_an_unwritable_output_fails_with_one_error_line(
    run: Any, images: dict[str, Path], models: Path, tmp_path: Path
) -> None:
    result = swap(run, images, models, tmp_path / "no-such-dir" / "out.png", "--provider", "cpu")
    assert_one_error(result, "out.png")


def test_swap_refuses_an_output_name_whose_format_it_cannot_tell(
    run: Any, images: dict[str, Path], models: Path, tmp_path: Path
) -> None:
    result = swap(run, images, models, tmp_path / "out.gif", "--provider", "cpu")
    assert_one_error(result, "out.gif")
    assert not (tmp_path / "out.gif").exists()


def test_swap_with_a_corrupt_model_file_fails_with_one_error_line(
    run: Any, images: dict[str, Path], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt"
    write_demo_models(corrupt)
    (corrupt / SWAPPER_FILE).write_bytes(b"not an onnx model")
    result = run("swap", images["source"], images["target"], "-o", tmp_path / "out.png", "--models", corrupt)
    assert_one_error(result, SWAPPER_FILE)


# --- swap: processors and videos -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-second 10 fps MP4 with AAC audio: identity 2's face in every frame but the last five."""
    path = tmp_path_factory.mktemp("clips") / "clip.mov"  # the name says MOV; the content (MP4) decides
    return make_clip(path, frames=20, audio="aac", faces=lambda i: [] if i >= 15 else [(60, 40, 64, 2)]).path


def test_swap_with_the_enhancer(run: Any, images: dict[str, Path], models: Path, tmp_path: Path) -> None:
    plain, enhanced = tmp_path / "plain.png", tmp_path / "enhanced.png"
    assert swap(run, images, models, plain, "--provider", "cpu").exit_code == 0
    result = swap(run, images, models, enhanced, "--provider", "cpu", "--processors", "face_swapper,face_enhancer")
    assert result.exit_code == 0, result.output
    assert "swapped and enhanced 1 of 2 face(s)" in result.stderr
    assert not np.array_equal(cv2.imread(str(plain)), cv2.imread(str(enhanced)))


def test_swap_a_video_writes_an_mp4_and_reports_progress(
    run: Any, images: dict[str, Path], models: Path, clip: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.mp4"
    result = run("swap", images["source"], clip, "-o", output, "--models", models, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    progress, summary = result.stderr.rstrip("\n").split("\n")  # the progress line is rewritten with \r
    assert progress.split("\r")[-1].strip() == "20/20 frames (100%)"
    assert summary.startswith(f"{output}: 20 frames, 15 with a face swapped (face_swapper), in ")
    assert summary.endswith("on CPUExecutionProvider (demo models); audio copied")
    probe = probe_video(output)
    assert (probe.container, probe.video_codec, probe.frame_count, probe.audio_codec) == ("mp4", "h264", 20, "aac")


def test_swap_a_video_with_a_trim_a_crf_and_the_enhancer(
    run: Any, images: dict[str, Path], models: Path, clip: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.mp4"
    result = run(
        "swap", images["source"], clip, "-o", output, "--models", models, "--provider", "cpu",
        "--trim-start", "0.5", "--trim-end", "1.2", "--crf", "30", "--processors", "face_swapper,face_enhancer",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "7 frames, 7 with a face swapped (face_swapper, face_enhancer)" in result.stderr
    assert probe_video(output).frame_count == 7


@pytest.mark.parametrize(
    ("extra", "output_name", "code"),
    [
        (["--trim-start", "5"], "out.mp4", "invalid_trim"),
        (["--processors", "face_swapper,upscaler"], "out.mp4", "invalid_processors"),
        ([], "out.png", "name the output .mp4"),
        (["--format", "webp"], "out.mp4", "name the output .mp4"),
    ],
)
def test_swap_a_video_with_bad_options_fails_with_one_error_line(
    run: Any,
    images: dict[str, Path],
    models: Path,
    clip: Path,
    tmp_path: Path,
    extra: list[str],
    output_name: str,
    code: str,
) -> None:
    output = tmp_path / output_name
    result = run("swap", images["source"], clip, "-o", output, "--models", models, "--provider", "cpu", *extra)
    assert_one_error(result, code)
    assert not output.exists()


def test_video_options_with_an_image_target_fail_with_one_error_line(
    run: Any, images: dict[str, Path], models: Path, tmp_path: Path
) -> None:
    result = swap(run, images, models, tmp_path / "out.png", "--provider", "cpu", "--crf", "18")
    assert_one_error(result, "video targets only")


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
