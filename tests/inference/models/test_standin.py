"""Stand-in models: the real architectures' sizes and work against the published figures, insightface's own routing
and pipeline on the files, the enhancer's contract, the metadata that tells them apart, and `facemint models
standin`. The detector and recogniser (190 MB) are written once per module; the swapper (554 MB) and enhancer
(340 MB) only in the two slow tests that run them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from inference.models import (
    DETECTOR_FILE,
    ENHANCER_FILE,
    RECOGNIZER_FILE,
    STANDIN_FILES,
    STANDIN_ROLES,
    SWAPPER_FILE,
    draw_demo_face,
    is_demo_model,
    is_standin_model,
    read_model_metadata,
    standin_counts,
    write_demo_models,
    write_standin_models,
)
from inference.models.metadata import NotAnOnnxModel

BACKGROUND = 20
# GFPGANv1.4.pth (TencentARC/GFPGAN release v1.3.0) holds what the ONNX graph leaves out: the style MLP (8 Linear
# 512->512, unused with input_is_latent) and the U-Net's seven 1x1 to-RGB convs (intermediate outputs the exports drop).
GFPGAN_V14_PTH_BYTES = 348_632_874
GFPGAN_STYLE_MLP = 8 * (512 * 512 + 512)
GFPGAN_UNET_TO_RGB = sum(3 * c + 3 for c in (256, 256, 256, 256, 128, 64, 32))


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_standin_models(tmp_path_factory.mktemp("standin"), roles=("detector", "recognizer"))


@pytest.fixture(scope="module")
def detector(_block_network: None, standins: dict[str, Path]) -> Any:
    from insightface.model_zoo import get_model

    model = get_model(str(standins["detector"]), providers=["CPUExecutionProvider"])
    model.prepare(ctx_id=-1, input_size=(640, 640), det_thresh=0.5)
    return model


@pytest.fixture(scope="module")
def recognizer(_block_network: None, standins: dict[str, Path]) -> Any:
    from insightface.model_zoo import get_model

    model = get_model(str(standins["recognizer"]), providers=["CPUExecutionProvider"])
    model.prepare(ctx_id=-1)
    return model


def _frame(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), BACKGROUND, dtype=np.uint8)


def _face(detector: Any, image: np.ndarray) -> Any:
    from insightface.app.common import Face

    boxes, kpss = detector.detect(image, input_size=(640, 640))
    assert len(boxes) == 1
    return Face(bbox=boxes[0, :4], kps=kpss[0], det_score=boxes[0, 4])


# --- counts against the published figures ---------------------------------------------------------------------


def test_detector_counts_match_scrfd_10g_kps() -> None:
    vga = standin_counts("detector", det_size=(640, 480))
    assert vga.published.params is not None
    assert vga.published.flops is not None
    # README: 4.23M params (PyTorch, BN affine included), 10G FLOPs at VGA.
    assert vga.network_params == pytest.approx(vga.published.params, rel=0.005)
    assert vga.network_flops == pytest.approx(vga.published.flops, rel=0.01)
    assert 4 * vga.network_params == pytest.approx(vga.published.file_bytes, rel=0.002)  # det_10g.onnx
    square = standin_counts("detector")
    assert square.input_shapes == {"input.1": (1, 3, 640, 640)}
    assert square.network_flops == pytest.approx(vga.network_flops * 640 / 480, rel=0.001)
    assert square.guide_params < 0.005 * square.params
    assert square.guide_flops < 0.01 * square.flops


def test_recognizer_counts_match_iresnet50() -> None:
    counts = standin_counts("recognizer")
    assert counts.published.params is not None
    assert counts.published.flops is not None
    assert counts.input_shapes == {"input.1": (1, 3, 112, 112)}
    assert counts.network_params == pytest.approx(counts.published.params, rel=0.005)  # 43.6M
    assert counts.network_flops == pytest.approx(counts.published.flops, rel=0.01)  # 6.3G
    assert 4 * counts.network_params == pytest.approx(counts.published.file_bytes, rel=0.0005)  # w600k_r50.onnx
    assert counts.guide_params < 0.005 * counts.params


def test_swapper_counts_fill_the_real_file() -> None:
    counts = standin_counts("swapper")
    assert counts.input_shapes == {"target": (1, 3, 128, 128), "source": (1, 512)}
    # The real file is its float32 weights (emap included) plus about 26 KB of graph.
    assert 4 * counts.network_params == pytest.approx(counts.published.file_bytes, rel=0.0002)
    assert 4 * counts.network_params < (counts.published.file_bytes or 0)
    assert counts.network_flops == pytest.approx(174.6e9, rel=0.001)  # 12 of the 175 G are the style blocks' convs


def test_enhancer_counts_match_gfpgan_v14_checkpoint() -> None:
    counts = standin_counts("enhancer")
    assert counts.input_shapes == {"input": (1, 3, 512, 512)}
    assert counts.guide_params == counts.guide_flops == 0  # the guide is the identity
    # FaceFusion's gfpgan_1.4.onnx is its float32 weights plus about 40 KB of graph.
    assert 4 * counts.network_params == pytest.approx(counts.published.file_bytes, rel=0.0005)
    assert 4 * counts.network_params < (counts.published.file_bytes or 0)
    checkpoint = counts.network_params + GFPGAN_STYLE_MLP + GFPGAN_UNET_TO_RGB
    assert 4 * checkpoint == pytest.approx(GFPGAN_V14_PTH_BYTES, rel=0.0005)


def test_counts_need_a_known_role() -> None:
    with pytest.raises(ValueError, match="unknown stand-in role"):
        standin_counts("upscaler")


# --- files ----------------------------------------------------------------------------------------------------


def test_files_carry_stand_in_metadata_and_valid_graphs(standins: dict[str, Path]) -> None:
    assert standins["detector"].name == DETECTOR_FILE
    assert standins["recognizer"].name == RECOGNIZER_FILE
    assert STANDIN_FILES == {
        "detector": DETECTOR_FILE,
        "recognizer": RECOGNIZER_FILE,
        "swapper": SWAPPER_FILE,
        "enhancer": ENHANCER_FILE,
    }
    for role, path in standins.items():
        metadata = read_model_metadata(path)
        assert metadata.properties["facemint_standin"] == "1"
        assert metadata.properties["facemint_standin_role"] == role
        assert metadata.properties["facemint_standin_seed"] == "0"
        assert "stand-in" in metadata.doc_string
        assert "random weights" in metadata.doc_string
        onnx.checker.check_model(str(path), full_check=True)
    assert 4 * standin_counts("detector").params < standins["detector"].stat().st_size
    assert not [p for p in standins["detector"].parent.iterdir() if p.name.endswith(".tmp")]


def test_is_standin_model_tells_stand_ins_from_demo_models(standins: dict[str, Path], tmp_path: Path) -> None:
    demo = write_demo_models(tmp_path / "demo")
    for path in standins.values():
        assert is_standin_model(path)
        assert not is_demo_model(path)
    for path in demo.values():
        assert not is_standin_model(path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xff\xff\xff not a model")
    with pytest.raises(NotAnOnnxModel):
        read_model_metadata(garbage)
    assert not is_standin_model(garbage)
    with pytest.raises(OSError):
        is_standin_model(tmp_path / "missing.onnx")


def test_a_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first = write_standin_models(tmp_path / "a", seed=7, roles=["detector"])["detector"].read_bytes()
    again = write_standin_models(tmp_path / "b", seed=7, roles=["detector"])["detector"].read_bytes()
    other = write_standin_models(tmp_path / "c", seed=8, roles=["detector"])["detector"].read_bytes()
    assert first == again
    assert first != other
    with pytest.raises(ValueError, match="unknown stand-in role"):
        write_standin_models(tmp_path / "d", roles=["detector", "upscaler"])
    assert not (tmp_path / "d").exists()


# --- insightface on the stand-ins -----------------------------------------------------------------------------


def test_detector_routes_to_scrfd_and_finds_the_demo_face(detector: Any) -> None:
    assert type(detector).__name__ == "SCRFD"
    assert (detector.fmc, detector.use_kps, detector.batched, detector._num_anchors) == (3, True, False, 2)
    image = _frame(1280, 720)
    box = draw_demo_face(image, 500, 200, 240, identity=1)
    for size in ((640, 640), (320, 320)):  # each size builds its own static session
        boxes, kpss = detector.detect(image, input_size=size)
        assert boxes.shape == (1, 5)
        assert kpss.shape == (1, 5, 2)
        assert boxes[0, :4] == pytest.approx(box, abs=2.0 * 1280 / size[0])
        assert boxes[0, 4] > 0.9
    assert detector.detect(_frame(640, 480), input_size=(640, 640))[0].shape == (0, 5)


def test_detector_outputs_have_the_contracted_shapes(standins: dict[str, Path]) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(standins["detector"]), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [[1, 3, "?", "?"]]
    noise = np.random.default_rng(0).standard_normal((1, 3, 384, 640), dtype=np.float32)
    outputs = session.run(None, {"input.1": noise})
    rows = [(384 // s) * (640 // s) * 2 for s in (8, 16, 32)]
    assert [o.shape for o in outputs] == [(n, w) for w in (1, 4, 10) for n in rows]
    assert all(np.isfinite(o).all() for o in outputs)
    assert all(((o >= 0) & (o <= 1)).all() for o in outputs[:3])


def test_recognizer_routes_to_arcface_with_dynamic_batch(detector: Any, recognizer: Any) -> None:
    assert type(recognizer).__name__ == "ArcFaceONNX"
    assert (recognizer.input_mean, recognizer.input_std) == (127.5, 127.5)  # not in-graph normalisation
    assert recognizer.input_shape == ["None", 3, 112, 112]
    assert recognizer.output_shape == ["None", 512]
    crops = list(np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8))
    assert recognizer.get_feat(crops).shape == (2, 512)
    faces = []
    for x, y, side, identity in ((40, 100, 150, 1), (300, 200, 220, 1), (40, 100, 150, 2)):
        image = _frame(640, 480)
        draw_demo_face(image, x, y, side, identity=identity)
        face = _face(detector, image)
        assert recognizer.get(image, face).shape == (512,)
        faces.append(face)
    same, moved, other = faces
    assert float(same.normed_embedding @ moved.normed_embedding) > 0.99  # the demo guide's identity survives
    assert float(same.normed_embedding @ other.normed_embedding) < 0.5


@pytest.mark.slow
def test_swapper_routes_to_inswapper_and_swaps_the_demo_identity(
    detector: Any, recognizer: Any, tmp_path: Path
) -> None:
    from insightface.model_zoo import get_model

    path = write_standin_models(tmp_path, roles=["swapper"])["swapper"]
    assert path.stat().st_size == pytest.approx(554_253_681, rel=0.002)
    swapper = get_model(str(path), providers=["CPUExecutionProvider"])
    assert type(swapper).__name__ == "INSwapper"
    assert swapper.emap.shape == (512, 512)
    assert swapper.emap.dtype == np.float32
    assert [i.shape for i in swapper.session.get_inputs()] == [[1, 3, 128, 128], [1, 512]]
    source_image, target_image = _frame(640, 480), _frame(640, 480)
    draw_demo_face(source_image, 200, 120, 200, identity=1)
    draw_demo_face(target_image, 220, 140, 180, identity=2)
    source, target = _face(detector, source_image), _face(detector, target_image)
    recognizer.get(source_image, source)
    recognizer.get(target_image, target)
    swapped_image = swapper.get(target_image, target, source, paste_back=True)
    swapped = _face(detector, swapped_image)
    recognizer.get(swapped_image, swapped)
    assert float(swapped.normed_embedding @ source.normed_embedding) > 0.9
    assert float(target.normed_embedding @ source.normed_embedding) < 0.5


@pytest.mark.slow
def test_enhancer_has_the_gfpgan_contract_and_runs(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = write_standin_models(tmp_path, roles=["enhancer"])["enhancer"]
    assert path.name == ENHANCER_FILE
    assert is_standin_model(path)
    assert path.stat().st_size == pytest.approx(340_299_087, rel=0.001)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    (produced,) = session.get_outputs()
    assert (given.shape, given.type) == ([1, 3, 512, 512], "tensor(float)")
    assert (produced.shape, produced.type) == ([1, 3, 512, 512], "tensor(float)")
    face = np.random.default_rng(0).uniform(-1, 1, (1, 3, 512, 512)).astype(np.float32)
    (restored,) = session.run(None, {given.name: face})
    assert restored.shape == (1, 3, 512, 512)
    assert np.isfinite(restored).all()
    assert np.abs(restored - face).max() <= 0.0041  # the identity guide plus at most 0.4 % of the network's output
    assert np.abs(restored - face).max() > 0.0  # ... which is computed


# --- command line ---------------------------------------------------------------------------------------------


def test_cli_models_standin_writes_the_chosen_roles(tmp_path: Path) -> None:
    from facemint.cli.main import cli

    target = tmp_path / "standin"
    result = CliRunner().invoke(cli, ["models", "standin", str(target), "--role", "detector", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(target / DETECTOR_FILE)]
    assert "stand-in models written" in result.stderr
    assert [p.name for p in target.iterdir()] == [DETECTOR_FILE]
    assert is_standin_model(target / DETECTOR_FILE)
    assert read_model_metadata(target / DETECTOR_FILE).properties["facemint_standin_seed"] == "3"
    refused = CliRunner().invoke(cli, ["models", "standin", str(target), "--role", "upscaler"])
    assert refused.exit_code == 2
    assert "upscaler" in refused.stderr
    assert set(STANDIN_ROLES) == {"detector", "recognizer", "swapper", "enhancer"}
