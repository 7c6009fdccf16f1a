"""`facemint swap`: images, face selections, formats, bad inputs, processors and videos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import Result

from inference.models import (
    SWAPPER_FILE,
    write_demo_models,
)
from inference.video import probe_video
from tests.inference.video_helpers import make_clip
from tests.platform.engine_cli.conftest import (
    LEFT_FACE,
    RIGHT_FACE,
    assert_one_error,
    face_changed,
)

# insightface's face_align calls an API scikit-image 0.26 deprecates, on every alignment.
pytestmark = pytest.mark.filterwarnings("ignore:.*estimate.*is deprecated:FutureWarning")

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
