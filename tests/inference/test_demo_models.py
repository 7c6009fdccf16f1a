"""The demo models honour the real models' contracts and run through insightface 2.1's own code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper

from inference.models import (
    DEMO_METADATA_KEY,
    DETECTOR_FILE,
    ENHANCER_FILE,
    RECOGNIZER_FILE,
    SWAPPER_FILE,
    NotAnOnnxModel,
    demo_face_colours,
    draw_demo_face,
    is_demo_model,
    read_model_metadata,
    write_demo_models,
)
from tests.inference.conftest import NetworkAccessBlocked

Box = tuple[float, float, float, float]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]


def _image(height: int, width: int, background: int = 12) -> NDArray[np.uint8]:
    return np.full((height, width, 3), background, dtype=np.uint8)


def _cosine(a: Any, b: Any) -> float:
    return float(np.dot(a.normed_embedding, b.normed_embedding))


def _single_face(app: Any, identity: int, x: int = 100, y: int = 80, size: int = 160) -> tuple[Any, Any]:
    image = _image(480, 640)
    draw_demo_face(image, x, y, size, identity=identity)
    faces = app.get(image)
    assert len(faces) == 1
    return image, faces[0]


def _assert_box(face: Any, expected: Box, tolerance: float) -> None:
    assert np.abs(np.asarray(face.bbox) - np.asarray(expected)).max() <= tolerance, (face.bbox, expected)


# --- files ----------------------------------------------------------------------------------------------------


def test_generation_is_deterministic_and_silent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write_demo_models(tmp_path / "a")
    second = write_demo_models(tmp_path / "b", seed=0)
    other = write_demo_models(tmp_path / "c", seed=1)

    assert capsys.readouterr().out == ""
    assert set(first) == {"detection", "recognition", "swapper", "enhancer"}
    assert [p.name for p in first.values()] == [DETECTOR_FILE, RECOGNIZER_FILE, SWAPPER_FILE, ENHANCER_FILE]
    for role in first:
        assert first[role].read_bytes() == second[role].read_bytes(), role
    assert first["recognition"].read_bytes() != other["recognition"].read_bytes()
    assert first["swapper"].read_bytes() != other["swapper"].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in first.values())


def test_rewriting_replaces_files_in_place(tmp_path: Path) -> None:
    paths = write_demo_models(tmp_path, seed=3)
    before = {role: path.read_bytes() for role, path in paths.items()}
    assert write_demo_models(tmp_path, seed=3) == paths
    assert {role: path.read_bytes() for role, path in paths.items()} == before
    assert len(list(tmp_path.iterdir())) == 4  # no temporary files left behind


def test_detector_contract(demo_models: dict[str, Path]) -> None:
    model = onnx.load(str(demo_models["detection"]))
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, model.opset_import[0].version) == (8, 13)
    [image] = model.graph.input
    assert image.name == "input.1"
    assert _dims(image) == [1, 3, "?", "?"]
    outputs = model.graph.output
    assert [o.name for o in outputs] == [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    assert [_dims(o)[1] for o in outputs] == [1, 1, 1, 4, 4, 4, 10, 10, 10]
    assert all(len(_dims(o)) == 2 and o.type.tensor_type.elem_type == TensorProto.FLOAT for o in outputs)


def test_recognizer_contract(demo_models: dict[str, Path]) -> None:
    model = onnx.load(str(demo_models["recognition"]))
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, model.opset_import[0].version) == (8, 13)
    [image] = model.graph.input
    [embedding] = model.graph.output
    assert _dims(image) == ["None", 3, 112, 112]
    assert _dims(embedding) == ["None", 512]
    # insightface assumes in-graph normalisation when early node names start with Sub and Mul.
    names = [node.name for node in model.graph.node[:8]]
    assert not any(name.startswith(("Sub", "_minus", "Mul", "_mul")) for name in names)


def test_swapper_contract(demo_models: dict[str, Path]) -> None:
    model = onnx.load(str(demo_models["swapper"]))
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, model.opset_import[0].version) == (8, 13)
    assert [(i.name, _dims(i)) for i in model.graph.input] == [("target", [1, 3, 128, 128]), ("source", [1, 512])]
    assert [(o.name, _dims(o)) for o in model.graph.output] == [("output", [1, 3, 128, 128])]
    emap_tensor = model.graph.initializer[-1]
    assert emap_tensor.name == "buff2fs"
    assert not any("buff2fs" in node.input for node in model.graph.node)
    emap = onnx.numpy_helper.to_array(emap_tensor)
    assert emap.dtype == np.float32
    assert emap.shape == (512, 512)
    np.testing.assert_allclose(emap @ emap.T, np.eye(512), atol=1e-5)


def test_enhancer_contract_and_place(demo_models: dict[str, Path]) -> None:
    model = onnx.load(str(demo_models["enhancer"]))
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, model.opset_import[0].version) == (8, 13)
    assert [(i.name, _dims(i)) for i in model.graph.input] == [("input", [1, 3, 512, 512])]
    assert [(o.name, _dims(o)) for o in model.graph.output] == [("output", [1, 3, 512, 512])]
    # Next to the swapper, out of the FaceAnalysis pack (see the routing test below).
    assert demo_models["enhancer"].parent == demo_models["swapper"].parent != demo_models["detection"].parent


# --- metadata -------------------------------------------------------------------------------------------------


def _plain_model(path: Path, props: dict[str, str] | None = None) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, doc_string="plain")
    if props:
        helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def test_demo_models_are_marked(demo_models: dict[str, Path]) -> None:
    for role, path in demo_models.items():
        assert is_demo_model(path)
        model = onnx.load(str(path), load_external_data=False)
        metadata = read_model_metadata(path)
        assert metadata.properties == {p.key: p.value for p in model.metadata_props}
        assert metadata.properties[DEMO_METADATA_KEY] == "1"
        assert metadata.properties["facemint_demo_role"] == role
        assert metadata.doc_string == model.doc_string
        assert "demo" in metadata.doc_string
        assert "demo" in model.graph.doc_string.lower()


def test_other_files_are_not_demo_models(tmp_path: Path) -> None:
    assert not is_demo_model(_plain_model(tmp_path / "plain.onnx"))
    assert read_model_metadata(tmp_path / "plain.onnx").doc_string == "plain"
    assert not is_demo_model(_plain_model(tmp_path / "zero.onnx", {DEMO_METADATA_KEY: "0", "other": "x"}))
    assert read_model_metadata(tmp_path / "zero.onnx").properties == {DEMO_METADATA_KEY: "0", "other": "x"}

    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_bytes(b"not a model at all\n" * 10)
    whole = (tmp_path / "plain.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(whole[: len(whole) // 2])
    for name in ("empty.onnx", "text.onnx", "truncated.onnx"):
        assert not is_demo_model(tmp_path / name), name
    with pytest.raises(NotAnOnnxModel):
        read_model_metadata(tmp_path / "empty.onnx")
    with pytest.raises(FileNotFoundError):
        is_demo_model(tmp_path / "missing.onnx")


# --- insightface routing --------------------------------------------------------------------------------------


def test_insightface_routes_each_model(demo_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.inswapper import INSwapper
    from insightface.model_zoo.scrfd import SCRFD

    providers = ["CPUExecutionProvider"]
    detector = get_model(str(demo_models["detection"]), providers=providers)
    assert isinstance(detector, SCRFD)
    assert detector.taskname == "detection"
    assert (detector.fmc, detector._feat_stride_fpn, detector._num_anchors) == (3, [8, 16, 32], 2)
    assert detector.use_kps
    assert not detector.batched
    assert (detector.input_mean, detector.input_std) == (127.5, 128.0)
    assert detector.input_name == "input.1"
    assert detector.static_input_size is None  # dynamic H/W: one fixed-shape session per det size

    recognizer = get_model(str(demo_models["recognition"]), providers=providers)
    assert isinstance(recognizer, ArcFaceONNX)
    assert recognizer.taskname == "recognition"
    assert (recognizer.input_mean, recognizer.input_std) == (127.5, 127.5)
    assert recognizer.input_size == (112, 112)
    assert recognizer.output_shape == ["None", 512]

    swap = get_model(str(demo_models["swapper"]), providers=providers)
    assert isinstance(swap, INSwapper)
    assert not hasattr(swap, "taskname")
    assert swap.input_names == ["target", "source"]
    assert swap.input_size == (128, 128)
    assert swap.emap.shape == (512, 512)
    assert swap.emap.dtype == np.float32
    assert capsys.readouterr().out == "inswapper-shape: [1, 3, 128, 128]\n"  # insightface's own print


def test_insightface_would_take_the_enhancer_for_a_recogniser(demo_models: dict[str, Path]) -> None:
    """Why write_demo_models keeps gfpgan_1.4.onnx out of the FaceAnalysis pack: the shape router sends any
    square input of 112 px or more to ArcFaceONNX, and the file sorts before w600k_r50.onnx."""
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    routed = get_model(str(demo_models["enhancer"]), providers=["CPUExecutionProvider"])
    assert isinstance(routed, ArcFaceONNX)
    assert routed.taskname == "recognition"
    assert sorted([ENHANCER_FILE, RECOGNIZER_FILE])[0] == ENHANCER_FILE


# --- detection and recognition --------------------------------------------------------------------------------


def test_nothing_is_found_on_a_dark_image(face_app: Any) -> None:
    noise = np.random.default_rng(0).integers(0, 86, size=(480, 640, 3), dtype=np.uint8)
    assert face_app.get(noise) == []
    assert face_app.get(_image(720, 1280, background=0)) == []


@pytest.mark.parametrize(
    ("x", "y", "size"),
    [(0, 0, 32), (301, 207, 47), (608, 0, 32), (100, 57, 200), (0, 80, 560), (79, 0, 560)],
)
def test_faces_in_detector_space_are_found_exactly(face_app: Any, x: int, y: int, size: int) -> None:
    image = _image(640, 640)
    expected = draw_demo_face(image, x, y, size, identity=size)
    [face] = face_app.get(image)
    _assert_box(face, expected, tolerance=0.5)
    assert face.det_score > 0.95


def test_several_faces_with_landmarks_and_embeddings(face_app: Any) -> None:
    image = _image(720, 1280)  # det_scale 0.5
    expected = [
        draw_demo_face(image, 40, 60, 120, identity=1),
        draw_demo_face(image, 192, 60, 300, identity=2),  # 32 px (16 px in detector space) from the first
        draw_demo_face(image, 900, 400, 256, identity=3),
    ]
    faces = sorted(face_app.get(image), key=lambda face: float(face.bbox[0]))
    assert len(faces) == 3
    for face, box in zip(faces, expected, strict=True):
        _assert_box(face, box, tolerance=3.0)
        assert face.det_score > 0.95
        kps = np.asarray(face.kps)
        assert kps.shape == (5, 2)
        x1, y1, x2, y2 = box
        assert ((kps[:, 0] > x1) & (kps[:, 0] < x2) & (kps[:, 1] > y1) & (kps[:, 1] < y2)).all()
        left_eye, right_eye, nose, left_mouth, right_mouth = kps
        assert left_eye[0] < nose[0] < right_eye[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
        assert face.embedding.shape == (512,)
        assert face.embedding.dtype == np.float32


def test_same_drawing_same_embedding_different_drawing_different(face_app: Any) -> None:
    _, face = _single_face(face_app, identity=7)
    _, again = _single_face(face_app, identity=7)
    _, moved = _single_face(face_app, identity=7, x=400, y=250, size=96)
    _, other = _single_face(face_app, identity=8)
    np.testing.assert_array_equal(face.embedding, again.embedding)
    assert _cosine(face, moved) > 0.99
    assert abs(_cosine(face, other)) < 0.6


def test_auto_det_size_runs_two_passes(demo_models: dict[str, Path]) -> None:
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(
        name=str(demo_models["detection"].parent),
        allowed_modules=["detection"],
        providers=["CPUExecutionProvider"],
    )
    app.prepare(ctx_id=-1)
    image = _image(480, 640)
    expected = draw_demo_face(image, 50, 70, 180)
    [face] = app.get(image)
    _assert_box(face, expected, tolerance=3.0)
    assert app.det_model.resolution_session_input_sizes == ((128, 128), (640, 640))


# --- swapping -------------------------------------------------------------------------------------------------


def test_swapped_crop_depends_on_the_source(face_app: Any, swapper: Any) -> None:
    from insightface.utils import face_align

    image, target = _single_face(face_app, identity=1, x=200, y=100, size=200)
    _, source = _single_face(face_app, identity=2)
    _, other_source = _single_face(face_app, identity=3)

    crop, matrix = swapper.get(image, target, source, paste_back=False)
    assert crop.shape == (128, 128, 3)
    assert crop.dtype == np.uint8
    assert matrix.shape == (2, 3)
    again, _ = swapper.get(image, target, source, paste_back=False)
    np.testing.assert_array_equal(crop, again)
    other, _ = swapper.get(image, target, other_source, paste_back=False)
    assert np.abs(crop.astype(int) - other.astype(int)).mean() > 5
    # Outside the face square (x < 8 in the 128 crop) the target passes through.
    aligned, _ = face_align.norm_crop2(image, target.kps, 128)
    assert np.abs(crop[:, :8].astype(int) - aligned[:, :8].astype(int)).max() <= 1


def test_paste_back_puts_the_source_identity_on_the_target(face_app: Any, swapper: Any) -> None:
    image, target = _single_face(face_app, identity=4, x=200, y=100, size=200)
    _, source = _single_face(face_app, identity=5)
    swapped = swapper.get(image, target, source, paste_back=True)
    assert swapped.shape == image.shape
    assert swapped.dtype == np.uint8
    assert not np.array_equal(swapped, image)
    outside = np.ones(image.shape[:2], dtype=bool)
    outside[80:330, 180:430] = False
    np.testing.assert_array_equal(swapped[outside], image[outside])  # background untouched

    [result] = face_app.get(swapped)
    _assert_box(result, (200, 100, 400, 300), tolerance=2.0)
    assert _cosine(result, source) > 0.85
    assert _cosine(result, source) > _cosine(result, target) + 0.5


# --- drawing and network --------------------------------------------------------------------------------------


def test_draw_demo_face_validates_and_uses_bright_colours() -> None:
    image = _image(100, 100)
    assert draw_demo_face(image, 10, 20, 40, identity=9) == (10.0, 20.0, 50.0, 60.0)
    assert (image[20:60, 10:50].min(axis=2) >= 170).all()
    assert (image[:20] == 12).all()
    colours = demo_face_colours(9)
    assert colours.shape == (4, 4, 3)
    assert colours.min() >= 170
    np.testing.assert_array_equal(colours, demo_face_colours(9))
    assert not np.array_equal(colours, demo_face_colours(10))
    with pytest.raises(ValueError):
        draw_demo_face(image, 70, 0, 40)
    with pytest.raises(ValueError):
        draw_demo_face(image.astype(np.float32), 0, 0, 10)  # type: ignore[arg-type, unused-ignore]


def test_a_model_name_would_download_and_is_blocked(tmp_path: Path) -> None:
    from insightface.app import FaceAnalysis

    with pytest.raises(NetworkAccessBlocked):
        FaceAnalysis(name="facemint-no-such-pack", root=str(tmp_path), providers=["CPUExecutionProvider"])
