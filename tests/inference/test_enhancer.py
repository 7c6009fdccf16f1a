"""The face enhancer (GFPGAN 1.4's contract) on the demo enhancer: what it refuses, what it writes and where."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper

from inference.enhancer import DEFAULT_BLEND, ENHANCER_FILE, ENHANCER_SIZE, FFHQ_512, FaceEnhancer, align
from inference.errors import ModelContractError, ModelNotFound
from inference.models import build_enhancer, demo_face_colours, draw_demo_face
from inference.models.demo import ARCFACE_TEMPLATE, ENHANCER_GAIN, ENHANCER_RGB_OFFSET, FACE_TILES
from inference.paste import box_mask

CPU = ["CPUExecutionProvider"]
BACKGROUND = 12

Frame = NDArray[np.uint8]


@pytest.fixture(scope="module")
def enhancer(demo_models: dict[str, Path]) -> FaceEnhancer:
    loaded = FaceEnhancer.load(demo_models["enhancer"], providers=CPU)
    loaded.warm_up()
    return loaded


def _frame(height: int = 480, width: int = 640) -> Frame:
    return np.full((height, width, 3), BACKGROUND, dtype=np.uint8)


def _kps(x: float, y: float, size: float) -> NDArray[np.float32]:
    """The landmarks the demo detector reports for a demo face drawn at (x, y) with this side."""
    return (np.array([x, y]) + ARCFACE_TEMPLATE / 112.0 * size).astype(np.float32)


def _expected(bgr: NDArray[np.uint8], blend: float = DEFAULT_BLEND) -> NDArray[np.int64]:
    """What the demo enhancer does to a pixel deep inside the face: its stretch in RGB [-1, 1], FaceFusion's
    denormalisation, then the blend."""
    rgb = bgr[::-1].astype(np.float64) / 127.5 - 1.0
    model = np.clip(ENHANCER_GAIN * rgb + np.array(ENHANCER_RGB_OFFSET), -1.0, 1.0)
    restored = np.rint((model + 1.0) * 127.5)[::-1]
    return np.rint(bgr + blend * (restored - bgr)).astype(np.int64)


def _tile_centres(x: int, y: int, size: int) -> list[tuple[int, int, int, int]]:
    """(row, col, frame y, frame x) of the centre of each of the face's tiles."""
    step = size / FACE_TILES
    return [
        (row, col, int(y + (row + 0.5) * step), int(x + (col + 0.5) * step))
        for row in range(FACE_TILES)
        for col in range(FACE_TILES)
    ]


def _assert_face_as_predicted(
    frame: Frame, x: int, y: int, size: int, identity: int, blend: float = DEFAULT_BLEND
) -> None:
    """Every tile centre in the frame holds the prediction, to one level: the model runs in float32 (a value
    that lands on .5 may round either way) and the outer tiles reach the mask's feathered edge (0.998, not 1)."""
    colours = demo_face_colours(identity)
    checked = 0
    for row, col, py, px in _tile_centres(x, y, size):
        if 0 <= py < frame.shape[0] and 0 <= px < frame.shape[1]:
            expected = _expected(colours[row, col], blend)
            assert np.abs(frame[py, px].astype(np.int64) - expected).max() <= 1, (row, col, frame[py, px], expected)
            checked += 1
    assert checked


def _outside_crop(shape: tuple[int, ...], kps: NDArray[np.float32]) -> NDArray[np.bool_]:
    """The frame pixels that the aligned 512 crop does not cover."""
    matrix = align(kps)
    assert matrix is not None
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    u = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    v = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    return (u < 0) | (v < 0) | (u > ENHANCER_SIZE - 1) | (v > ENHANCER_SIZE - 1)


Values = list[tuple[str, int, list[Any]]]


def _model_file(path: Path, inputs: Values, outputs: Values) -> Path:
    """A runnable ONNX file with these (name, element type, shape) inputs and outputs (every output a Cast of the
    first input)."""
    nodes = [helper.make_node("Cast", [inputs[0][0]], [name], to=kind) for name, kind, _ in outputs]
    graph = helper.make_graph(
        nodes,
        "wrong",
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# --- loading --------------------------------------------------------------------------------------------------


def test_loads_on_the_given_providers_and_session_options(demo_models: dict[str, Path]) -> None:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    loaded = FaceEnhancer.load(demo_models["enhancer"], providers=CPU, sess_options=options)
    assert ENHANCER_FILE == "gfpgan_1.4.onnx" == loaded.path.name
    assert loaded.session.get_providers() == CPU
    assert loaded.session.get_session_options().intra_op_num_threads == 1
    assert loaded.blend == DEFAULT_BLEND == 0.8
    loaded.warm_up()


SIDE = ENHANCER_SIZE
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ([("input", FLOAT, [1, 3, 256, 256])], [("output", FLOAT, [1, 3, 256, 256])], r"shape \[1, 3, 256, 256\]"),
        (  # CodeFormer's contract: a second input, `weight`
            [("input", FLOAT, [1, 3, SIDE, SIDE]), ("weight", TensorProto.DOUBLE, [1])],
            [("output", FLOAT, [1, 3, SIDE, SIDE])],
            "one input and one output, got 2 and 1",
        ),
        ([("input", FLOAT, [1, 3, SIDE, SIDE])], [("a", FLOAT, [1, 3, SIDE, SIDE]), ("b", FLOAT, [1])], "got 1 and 2"),
        ([("input", HALF, [1, 3, SIDE, SIDE])], [("output", HALF, [1, 3, SIDE, SIDE])], r"tensor\(float16\)"),
        ([("input", FLOAT, [1, 3, SIDE, SIDE])], [("output", FLOAT, [1, 512])], r"output 'output' has shape"),
        ([("input", FLOAT, [2, 3, SIDE, SIDE])], [("output", FLOAT, [2, 3, SIDE, SIDE])], r"shape \[2, 3"),
        ([("input", FLOAT, [1, 3, "h", "w"])], [("output", FLOAT, [1, 3, "h", "w"])], r"shape \[1, 3, 'h', 'w'\]"),
    ],
)
def test_a_model_without_the_gfpgan_contract_is_refused(
    tmp_path: Path, inputs: Values, outputs: Values, message: str
) -> None:
    path = _model_file(tmp_path / ENHANCER_FILE, inputs, outputs)
    with pytest.raises(ModelContractError, match=message) as refused:
        FaceEnhancer.load(path, providers=CPU)
    assert refused.value.code == "model_contract_mismatch"
    assert not refused.value.input_error


def test_a_symbolic_batch_is_accepted(tmp_path: Path) -> None:
    shape = ["batch", 3, SIDE, SIDE]
    path = _model_file(tmp_path / ENHANCER_FILE, [("input", FLOAT, shape)], [("output", FLOAT, shape)])
    frame = _frame()
    draw_demo_face(frame, 200, 120, 200)
    before = frame.copy()
    assert FaceEnhancer.load(path, providers=CPU).enhance(frame, _kps(200, 120, 200)) is not None
    for _, _, y, x in _tile_centres(200, 120, 200):  # an identity model: no change (but resampling at edges)
        assert np.array_equal(frame[y, x], before[y, x])


def test_a_file_that_is_not_a_model_or_is_missing_is_refused(tmp_path: Path) -> None:
    (tmp_path / ENHANCER_FILE).write_bytes(b"not an onnx model\n" * 4)
    with pytest.raises(ModelContractError, match="could not be loaded as an ONNX model"):
        FaceEnhancer.load(tmp_path / ENHANCER_FILE, providers=CPU)
    with pytest.raises(ModelNotFound, match="missing"):
        FaceEnhancer.load(tmp_path / "absent" / ENHANCER_FILE, providers=CPU)


def test_blend_must_be_a_fraction(demo_models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="blend"):
        FaceEnhancer.load(demo_models["enhancer"], providers=CPU, blend=1.5)


# --- alignment ------------------------------------------------------------------------------------------------


def test_alignment_is_facefusions_least_squares_fit() -> None:
    """The closed-form fit equals what FaceFusion's estimateAffinePartial2D (RANSAC, 100 px threshold) finds."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.2, 3.0)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        kps = (FFHQ_512 * 200) @ rotation.T + rng.uniform(0, 400, 2) + rng.normal(0, 2.0, (5, 2))
        ours = align(kps)
        theirs = cv2.estimateAffinePartial2D(kps, FFHQ_512 * 512, method=cv2.RANSAC, ransacReprojThreshold=100)[0]
        assert ours is not None
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-2)


def test_landmarks_on_the_template_give_the_identity() -> None:
    matrix = align(FFHQ_512 * 512)
    assert matrix is not None
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-9)


# --- what is written, and where -------------------------------------------------------------------------------


def test_only_the_face_region_changes_and_the_face_as_the_demo_model_predicts(enhancer: FaceEnhancer) -> None:
    frame = _frame()
    draw_demo_face(frame, 200, 120, 200, identity=3)
    draw_demo_face(frame, 520, 20, 100, identity=4)  # another face, outside the first one's crop
    before = frame.copy()
    kps = _kps(200, 120, 200)

    box = enhancer.enhance(frame, kps)

    assert box is not None
    x0, y0, x1, y1 = box
    assert (x0 < 200, y0 < 120, x1 > 400, y1 > 320) == (True, True, True, True)
    outside_box = np.ones(frame.shape[:2], dtype=bool)
    outside_box[y0:y1, x0:x1] = False
    assert np.array_equal(frame[outside_box], before[outside_box])
    outside = _outside_crop(frame.shape, kps)
    assert np.array_equal(frame[outside], before[outside])  # bit for bit, the other face included
    assert np.array_equal(frame[20:120, 520:620], before[20:120, 520:620])
    _assert_face_as_predicted(frame, 200, 120, 200, identity=3)
    # The tint is on red (BGR index 2): the channel order survived the round trip.
    centre = frame[245, 325].astype(int) - before[245, 325]
    assert centre[2] > max(centre[0], centre[1])
    # Inside the crop but off the face, the dark background gets darker (the contrast stretch).
    band = frame[100:115, 220:380]
    assert (band < BACKGROUND).all()


def test_the_face_is_still_found_with_its_identity(enhancer: FaceEnhancer, face_app: Any) -> None:
    frame = _frame()
    draw_demo_face(frame, 180, 100, 220, identity=5)
    [face] = face_app.get(frame)
    enhanced = frame.copy()
    assert enhancer.enhance(enhanced, face.kps) is not None
    [again] = face_app.get(enhanced)
    np.testing.assert_allclose(again.bbox, face.bbox, atol=1.0)
    assert float(np.dot(face.normed_embedding, again.normed_embedding)) > 0.9
    assert not np.array_equal(enhanced, frame)


@pytest.mark.parametrize("blend", [0.0, 1.0])
def test_blend_weighs_the_enhanced_face(demo_models: dict[str, Path], blend: float) -> None:
    loaded = FaceEnhancer.load(demo_models["enhancer"], providers=CPU, blend=blend)
    frame = _frame()
    draw_demo_face(frame, 200, 120, 200, identity=6)
    before = frame.copy()
    assert loaded.enhance(frame, _kps(200, 120, 200)) is not None
    if blend == 0.0:
        assert np.array_equal(frame, before)
    _assert_face_as_predicted(frame, 200, 120, 200, identity=6, blend=blend)


def test_the_mask_is_zero_on_the_crops_edge_and_one_in_its_middle() -> None:
    mask = box_mask(ENHANCER_SIZE, 0.3)
    assert (mask.shape, mask.dtype) == ((ENHANCER_SIZE, ENHANCER_SIZE), np.float32)
    assert not mask.flags.writeable
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert (edge == 0).all()
    assert mask[ENHANCER_SIZE // 2, ENHANCER_SIZE // 2] == pytest.approx(1.0, abs=1e-5)
    assert (mask[:38] < 0.5).all()  # FaceFusion's zero border at blur 0.3: 512 * 0.3 / 4 = 38 px, then blurred


def test_a_face_partly_outside_the_frame(enhancer: FaceEnhancer) -> None:
    canvas = _frame(480, 800)
    draw_demo_face(canvas, 560, 150, 200, identity=7)
    frame = np.ascontiguousarray(canvas[:, :640])  # the face's right 40 % is cut off
    before = frame.copy()
    kps = _kps(560, 150, 200)  # two landmarks lie outside the frame

    box = enhancer.enhance(frame, kps)

    assert box is not None
    x0, y0, x1, y1 = box
    assert (x0 < 560, x1) == (True, 640)
    outside = _outside_crop(frame.shape, kps)
    assert np.array_equal(frame[outside], before[outside])
    _assert_face_as_predicted(frame, 560, 150, 200, identity=7)  # the tiles that are in the frame


def test_a_face_entirely_outside_the_frame_writes_nothing(enhancer: FaceEnhancer) -> None:
    frame = _frame()
    before = frame.copy()
    assert enhancer.enhance(frame, _kps(2000, 2000, 200)) is None
    assert enhancer.enhance(frame, _kps(-900, 100, 200)) is None
    assert np.array_equal(frame, before)


@pytest.mark.parametrize(
    "kps",
    [
        np.full((5, 2), np.nan, dtype=np.float32),
        np.array([[1.0, np.inf]] * 5, dtype=np.float32),
        np.full((5, 2), 300.0, dtype=np.float32),  # all five landmarks in one point
        _kps(200, 120, 1e-6),  # a face smaller than a millionth of a pixel
        _kps(200, 120, 200)[:4],  # four landmarks
        np.zeros((10,), dtype=np.float32),
    ],
    ids=["nan", "inf", "one-point", "vanishing", "four-points", "flat"],
)
def test_degenerate_landmarks_write_nothing(enhancer: FaceEnhancer, kps: NDArray[np.float32]) -> None:
    frame = _frame()
    draw_demo_face(frame, 200, 120, 200)
    before = frame.copy()
    assert enhancer.enhance(frame, kps) is None
    assert np.array_equal(frame, before)


def test_a_frame_that_is_not_bgr_uint8_is_refused(enhancer: FaceEnhancer) -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        enhancer.enhance(np.zeros((100, 100, 3), dtype=np.float32), _kps(10, 10, 50))
    with pytest.raises(ValueError, match="BGR uint8"):
        enhancer.enhance(np.zeros((100, 100), dtype=np.uint8), _kps(10, 10, 50))


# --- threads --------------------------------------------------------------------------------------------------


def test_threads_at_once_give_the_same_bytes_as_one_at_a_time(enhancer: FaceEnhancer) -> None:
    cases = []
    for index in range(8):
        frame = _frame(360, 480)
        x, y, size = 40 + 20 * index, 30 + 10 * index, 120 + 10 * index
        draw_demo_face(frame, x, y, size, identity=index)
        cases.append((frame, _kps(x, y, size)))

    def run(case: tuple[Frame, NDArray[np.float32]]) -> tuple[bytes, Any]:
        frame = case[0].copy()
        box = enhancer.enhance(frame, case[1])
        return frame.tobytes(), box

    alone = [run(case) for case in cases]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(run, cases * 3))
    assert together == alone * 3
    assert len({frame for frame, _ in alone}) == len(cases)


def test_the_model_is_the_demo_model_the_docs_describe() -> None:
    model = build_enhancer(0)
    assert [node.op_type for node in model.graph.node] == ["Mul", "Add"]
    assert {p.key: p.value for p in model.metadata_props}["facemint_demo_role"] == "enhancer"
