"""Fixtures and helpers for the engine's command line tests (`facemint models`, `doctor`, `swap`), in-process
through click's CliRunner, on demo models. No Postgres or Redis: FACEMINT_DATA_DIR points at a temporary
directory, and the only network is a file server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
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
