"""Regressions for defects found in the engine review: hostile shapes and files get typed errors."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from inference.engine import Engine, EngineConfig
from inference.errors import DownloadError, InvalidImage, NoTargetFace
from inference.media import decode_image
from inference.models import ManifestError, ModelFile, fetch_models, write_demo_models
from inference.paste import paste_face
from inference.providers import ProviderChoice
from tests.inference.test_engine import SOURCE, picture, png


@pytest.fixture(scope="module")
def engine(_block_network: None, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    directory = tmp_path_factory.mktemp("review_models")
    write_demo_models(directory)
    return Engine.load(EngineConfig(models_dir=directory, provider=ProviderChoice.cpu))


@pytest.mark.parametrize("shape", [(1, 641), (641, 1), (2, 1282)])
def test_a_sliver_image_has_no_face_rather_than_crashing(engine: Engine, shape: tuple[int, int]) -> None:
    with pytest.raises(NoTargetFace):
        engine.swap(png(SOURCE), png(np.zeros((*shape, 3), np.uint8)))


def test_a_progressive_jpeg_with_hundreds_of_scans_is_refused_before_decoding() -> None:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    sos = data.index(b"\xff\xda")
    # Repeat the first scan's marker segment many times: each is another full pass for the decoder.
    length = int.from_bytes(data[sos + 2 : sos + 4], "big")
    bomb = data[:sos] + data[sos : sos + 2 + length] * 500 + data[sos:]
    started = time.perf_counter()
    with pytest.raises(InvalidImage):
        decode_image(bomb)
    assert time.perf_counter() - started < 1.0


def test_an_empty_reference_is_an_invalid_image(engine: Engine) -> None:
    with pytest.raises(InvalidImage):
        engine.swap(png(SOURCE), png(picture(640, 480, [(200, 100, 200, 1)])), faces="reference", reference=b"")


def test_output_format_names_are_canonical(engine: Engine) -> None:
    result = engine.swap(png(SOURCE), png(picture(640, 480, [(200, 100, 200, 1)])), output_format="JPG")
    assert (result.format, result.content_type) == ("jpeg", "image/jpeg")


def test_a_degenerate_matrix_pastes_nothing() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    assert paste_face(frame, np.full((128, 128, 3), 255, np.uint8), np.full((2, 3), np.nan)) is None
    assert not frame.any()


def test_large_faces_paste_in_strips_with_the_same_result() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (1200, 900, 3), dtype=np.uint8)
    crop = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    matrix = cv2.getRotationMatrix2D((450, 600), 10, 128 / 800)  # a face 800 px tall: several strips
    matrix[:, 2] -= (450 - 64, 600 - 64)
    out = frame.copy()
    box = paste_face(out, crop, matrix)
    assert box is not None
    x0, y0, x1, y1 = box
    assert y1 - y0 > 512
    untouched = np.ones(frame.shape[:2], bool)
    untouched[y0:y1, x0:x1] = False
    assert np.array_equal(frame[untouched], out[untouched])
    assert not np.array_equal(frame, out)


def _model(**changes: object) -> ModelFile:
    values: dict[str, object] = {
        "name": "detector",
        "file": "det.onnx",
        "sha256": "0" * 64,
        "size": 10,
        "url": "http://127.0.0.1:1/x",
        "licence": "test",
    }
    values.update(changes)
    return ModelFile(**values)  # type: ignore[arg-type]


def test_manifest_refuses_unparseable_urls_and_part_names() -> None:
    with pytest.raises(ManifestError):
        _model(url="http://[::1/x")
    with pytest.raises(ManifestError):
        _model(file="det.onnx.part")


def test_a_destination_that_is_a_file_is_a_download_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(DownloadError):
        fetch_models([_model()], blocker / "models", retries=0, backoff=0)
