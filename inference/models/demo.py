"""Tiny stand-ins for insightface's three models and GFPGAN 1.4, with the real files' input/output contracts.

`write_demo_models(directory)` writes `det_10g.onnx` (SCRFD detector), `w600k_r50.onnx` (ArcFace recogniser),
`inswapper_128.onnx` (INSwapper) and `gfpgan_1.4.onnx` (the face enhancer) in about 0.2 s (60 KB, 0.4 MB,
1.4 MB, 0.5 KB), with no torch and no download.
insightface 2.1 routes models by their shapes alone, so its own `FaceAnalysis` and `model_zoo.get_model` load
these files and run the whole pipeline on them: detect, align, embed, swap, paste back. The weights are not
learned: each model computes something simple and predictable, so that tests can draw an image and know what the
engine must find.

Every file carries `metadata_props` `facemint_demo=1` (plus `facemint_demo_role`, `facemint_demo_seed`,
`facemint_demo_version`) and a `graph.doc_string` saying it is a demo model; `is_demo_model(path)` reads the
metadata without loading the graph, so it is cheap on the real 0.5 GB swapper too.

Important: insightface's `FaceAnalysis(name=<directory>)` loads every `*.onnx` in the directory and fails with
`AttributeError` on the swapper (INSwapper has no `taskname`), and its shape router takes the enhancer (one
square 512x512 input) for an ArcFace recogniser; so keep both out of that directory (`swapper_directory=` puts
them elsewhere) or load the detector and recogniser one by one with `get_model`.

Drawing a face the demo detector finds
--------------------------------------
A "face" is a bright, solid, axis-aligned square on a dark background: `draw_demo_face(image, x, y, size,
identity=n)` paints one (BGR uint8 image, top-left corner `(x, y)`, side `size`) as a 4x4 grid of bright tiles
whose colours come from `identity`, and returns the box the detector will report. Rules, in *detector space*
(the image scaled by `det_scale = min(det_w / width, det_h / height)`, i.e. `640 / max(width, height)` at
`det_size=(640, 640)`; a 640x640 image is detector space itself):

* every pixel of a face has a channel mean >= 170 (the tiles use 170..255 per channel); every background pixel a
  channel mean <= 85 (pure black is fine). Brightness is what the detector sees; keep faces uniformly bright,
  with no dark features inside;
* side between 32 and 560 px: found with score > 0.95. From 24 px and up to 580 px it is still found, with a
  lower score (0.88 at 24 px, 0.8 at 580 px); below 24 px or above about 590 px it is not (the detector reaches
  320 px from the face's centre);
* at least 16 px of dark background between two faces (any position otherwise, including touching the image
  border); the face must lie fully inside the image.

Then each face is found once, its box equals the drawn square to within about 1 px in detector space
(plus the blur of insightface's resize when `det_scale != 1`), and its 5 landmarks are the ArcFace template
placed on the square, so `norm_crop` cuts exactly the drawn square. Bright rectangles are found too, with
stretched landmarks. Other det sizes (multiples of 32, square or not) follow the same rules in their own space,
and so does Auto det size (`prepare()` without `det_size`: passes at 128 and 640, merged by NMS).

What the models compute
-----------------------
* **Detector** (`det_10g.onnx`, input `input.1` `[1, 3, '?', '?']`, 9 outputs `score_8, score_16, score_32,
  bbox_8, ..., kps_32` of shapes `[N_s, 1]`, `[N_s, 4]`, `[N_s, 10]`, 2 anchors): only stride 8 fires. A pixel's
  brightness is `sigmoid(40 * mean_channel(normalised))`; 8x8 cells are averaged, and from every anchor the run
  of consecutive bright cells is measured left, up, right and down (a 16 px band, up to 40 cells) as a sum of
  cumulative products, done as `exp(conv(log(cells)))`. Those runs are the box distances (exact sub-cell, because
  a partly bright edge cell counts by its fraction), the landmarks are the ArcFace template laid on that box, and
  the score is high where the anchor is bright, inside the box's central part, at least 6 px from every edge,
  and the runs stop before their 40-cell reach. Every anchor inside a face reports the same box, so NMS keeps one.
  Strides 16 and 32 have the right shapes but never fire.
* **Recogniser** (`w600k_r50.onnx`, `['None', 3, 112, 112]` -> `['None', 512]`): 14x14 average pooling of the
  aligned crop (an 8x8x3 colour layout, 192 values), centred on its mean, times an 8x(192x512) matrix with
  orthonormal rows. Same drawing => same embedding; different identities => nearly orthogonal embeddings.
  Its node names (`pool`, `flatten`, ...) make insightface infer mean/std 127.5, as for the real file.
* **Swapper** (`inswapper_128.onnx`, `target [1, 3, 128, 128]` + `source [1, 512]` -> `output [1, 3, 128, 128]`,
  last initializer `buff2fs`, float32 512x512 orthogonal, unused by the graph): insightface turns the source
  embedding into `latent = normed_embedding @ buff2fs`; the graph inverts that exactly back to the source face's
  8x8 colour layout (direction only; brightness is restored to a fixed bright level), paints it over the face
  square of the 128 crop (90 % source layout, 10 % target) and passes the rest of the crop through. After
  `paste_back`, the demo recogniser therefore sees the *source* identity on the target face, and the detector
  still finds it.
* **Enhancer** (`gfpgan_1.4.onnx`, `input [1, 3, 512, 512]` -> `output [1, 3, 512, 512]`, RGB in [-1, 1], the
  FFHQ-512 aligned crop): `output = 1.2 * input + (0.1, 0, 0)` per pixel (`ENHANCER_GAIN`,
  `ENHANCER_RGB_OFFSET`), unclipped like the real model's output: more contrast and a warm tint. Bright faces stay
  bright and dark backgrounds dark, so the detector and recogniser still find the face and its identity (cosine
  about 0.96 to the original after the enhancer's 80 % blend). It does not depend on the seed apart from its
  metadata.

All four are deterministic: the same seed gives byte-identical files (the matrices are signed, permuted
Hadamard matrices, and every product of them is exact in float64, so no BLAS rounding can differ between
machines). The detector does not depend on the seed apart from its metadata. Note that ONNX Runtime logs a
warning "Removing initializer 'buff2fs'" when it opens the swapper (as for the real file) unless its log
severity is >= 3, which `FaceAnalysis()` sets process-wide.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from inference.models.metadata import NotAnOnnxModel, read_model_metadata

DETECTOR_FILE: Final = "det_10g.onnx"
RECOGNIZER_FILE: Final = "w600k_r50.onnx"
SWAPPER_FILE: Final = "inswapper_128.onnx"
ENHANCER_FILE: Final = "gfpgan_1.4.onnx"

DEMO_METADATA_KEY: Final = "facemint_demo"
DEMO_VERSION: Final = "1"
OPSET: Final = 13
IR_VERSION: Final = 8

# ArcFace's 5-point template in its 112x112 crop (insightface.utils.face_align.arcface_dst).
ARCFACE_TEMPLATE: Final = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

FACE_MIN_CHANNEL_MEAN: Final = 170
BACKGROUND_MAX_CHANNEL_MEAN: Final = 85
FACE_TILES: Final = 4

# Detector: stride-8 cells, reach of the run measurement in cells, and the score terms.
_CELL = 8
_REACH = 40
_BRIGHT_SLOPE = 40.0
_LOG_FLOOR = 1e-12
_PAD_LOG = -30.0
_CENTRE_MIN = 0.3
_CENTRE_GAIN = 12.0
_BRIGHT_MIN = 0.5
_BRIGHT_GAIN = 12.0
_EDGE_MIN_CELLS = 0.75
_EDGE_GAIN = 8.0
_REACH_LIMIT = _REACH - 2.5
_REACH_GAIN = 2.0
_ANCHORS = 2

# Recogniser / swapper.
_POOL = 14
_GRID = 112 // _POOL
_FEATURES = 3 * _GRID * _GRID
_EMBEDDING = 512
_EMBEDDING_SCALE = 8.0
_SWAP_MEAN = 0.663  # normalised (x - 127.5) / 127.5 of a pixel value of about 212
_SWAP_AMPLITUDE = 2.7  # the typical norm of a centred demo-face layout
_SWAP_MIN = 0.34  # keeps every painted channel >= 171, bright enough for the detector
_SWAP_TARGET_SHARE = 0.1

# Enhancer: GFPGAN 1.4's crop size, and the stretch it applies in its [-1, 1] RGB space.
ENHANCER_SIZE: Final = 512
ENHANCER_GAIN: Final = 1.2
ENHANCER_RGB_OFFSET: Final = (0.1, 0.0, 0.0)

_Float = NDArray[np.float32]


def _f32(values: object) -> _Float:
    return np.asarray(values, dtype=np.float32)


def _i64(values: list[int]) -> NDArray[np.int64]:
    return np.asarray(values, dtype=np.int64)


class _Graph:
    """Collects nodes and initializers with unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: NDArray[np.generic]) -> str:
        self.initializers.append(numpy_helper.from_array(value, name=name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


@functools.lru_cache(maxsize=2)
def _hadamard(n: int) -> NDArray[np.int64]:
    """Sylvester Hadamard matrix of order n (a power of two): H[i, j] = (-1) ** popcount(i & j)."""
    index = np.arange(n, dtype=np.int64)
    both = index[:, None] & index[None, :]
    parity = np.zeros_like(both)
    for bit in range(max(n.bit_length() - 1, 1)):
        parity ^= (both >> bit) & 1
    matrix = np.where(parity == 1, -1, 1).astype(np.int64)
    matrix.flags.writeable = False  # shared through the cache
    return matrix


def _orthogonal(n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """A dense orthogonal matrix times sqrt(n), as integers +-1: a Hadamard matrix with permuted, sign-flipped
    rows and columns. Exact and platform-independent (no floating-point linear algebra)."""
    rows = rng.permutation(n)
    cols = rng.permutation(n)
    row_signs = rng.choice(np.array([-1, 1], dtype=np.int64), size=n)
    col_signs = rng.choice(np.array([-1, 1], dtype=np.int64), size=n)
    return row_signs[:, None] * _hadamard(n)[rows][:, cols] * col_signs[None, :]


def _matrices(seed: int) -> tuple[_Float, _Float, _Float]:
    """(recogniser weight 192x512, swapper decoder 512x192, emap 512x512), all float32."""
    rng = np.random.default_rng([seed, 0x5EED])
    recognizer_rows = _orthogonal(_EMBEDDING, rng)[:_FEATURES]  # 192 orthogonal rows, entries +-1
    emap = _orthogonal(_EMBEDDING, rng)  # entries +-1
    # u = latent @ emap.T @ rows.T / 512. The products of +-1 matrices are integers below 2**53, so float64
    # arithmetic is exact whatever the summation order.
    decoder = (recognizer_rows.astype(np.float64) @ emap.astype(np.float64)).T / _EMBEDDING
    scale = 1.0 / math.sqrt(_EMBEDDING)
    return (
        _f32(recognizer_rows * (_EMBEDDING_SCALE * scale)),
        _f32(decoder),
        _f32(emap * scale),
    )


def _model(graph: onnx.GraphProto, role: str, seed: int) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facemint-demo",
        producer_version=DEMO_VERSION,
        doc_string=f"Facemint demo model ({role}); not a real face model.",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            DEMO_METADATA_KEY: "1",
            "facemint_demo_role": role,
            "facemint_demo_seed": str(seed),
            "facemint_demo_version": DEMO_VERSION,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# --- detector -------------------------------------------------------------------------------------------------


def _run_kernel(direction: str) -> tuple[_Float, list[int]]:
    """Conv weights [REACH, 1, kh, kw] and Pad pads for the cumulative log-brightness sums in one direction.

    Output channel k holds the sum of log-brightness over the k + 1 cells next to the anchor (averaged over the
    two cell rows or columns that touch the anchor), so exp() of it is the product of those cells' brightness."""
    horizontal = direction in ("left", "right")
    weights = np.zeros((_REACH, 1, 2, _REACH + 1) if horizontal else (_REACH, 1, _REACH + 1, 2), dtype=np.float32)
    for k in range(_REACH):
        span = slice(_REACH - k - 1, _REACH) if direction in ("left", "up") else slice(0, k + 1)
        if horizontal:
            weights[k, 0, :, span] = 0.5
        else:
            weights[k, 0, span, :] = 0.5
    # ONNX Pad order for NCHW: [n0, c0, top, left, n1, c1, bottom, right].
    pads = {
        "left": [0, 0, 1, _REACH, 0, 0, 0, 0],
        "right": [0, 0, 1, 0, 0, 0, 0, _REACH],
        "up": [0, 0, _REACH, 1, 0, 0, 0, 0],
        "down": [0, 0, 0, 1, 0, 0, _REACH, 0],
    }[direction]
    return weights, pads


def _landmark_weights() -> _Float:
    """1x1 Conv [10, 4, 1, 1] from box distances (l, t, r, b) to 5 landmark offsets laid on the box."""
    unit = ARCFACE_TEMPLATE / 112.0
    weights = np.zeros((10, 4, 1, 1), dtype=np.float32)
    for point, (u, v) in enumerate(unit):
        weights[2 * point, 0, 0, 0] = u - 1.0  # x = -l + (l + r) * u
        weights[2 * point, 2, 0, 0] = u
        weights[2 * point + 1, 1, 0, 0] = v - 1.0  # y = -t + (t + b) * v
        weights[2 * point + 1, 3, 0, 0] = v
    return weights


def _flatten_head(g: _Graph, tensor: str, width: int, name: str) -> str:
    transposed = g.op("Transpose", [tensor], f"{name}_nhwc", perm=[0, 2, 3, 1])
    return g.op("Reshape", [transposed, g.const(f"{name}_shape", _i64([-1, width]))], name)


def build_detector(seed: int = 0) -> onnx.ModelProto:
    g = _Graph()
    image = "input.1"
    scalar = {
        "eps": g.const("eps", _f32(1e-6)),
        "log_floor": g.const("log_floor", _f32(_LOG_FLOOR)),
        "pad_log": g.const("pad_log", _f32(_PAD_LOG)),
    }

    # Brightness in [0, 1] per pixel, then per 8x8 cell.
    channel_sum = g.op("ReduceSum", [image, g.const("channel_axis", _i64([1]))], "channel_sum", keepdims=1)
    luma = g.op("Mul", [channel_sum, g.const("bright_slope", _f32(_BRIGHT_SLOPE / 3.0))], "luma")
    bright = g.op("Sigmoid", [luma], "bright")
    cells = g.op("AveragePool", [bright], "cells", kernel_shape=[_CELL, _CELL], strides=[_CELL, _CELL])
    log_cells = g.op("Log", [g.op("Add", [cells, scalar["log_floor"]], "cells_floor")], "log_cells")

    runs: dict[str, str] = {}
    for direction in ("left", "up", "right", "down"):
        weights, pads = _run_kernel(direction)
        pad_amounts = g.const(f"pads_{direction}", _i64(pads))
        padded = g.op("Pad", [log_cells, pad_amounts, scalar["pad_log"]], f"pad_{direction}")
        sums = g.op("Conv", [padded, g.const(f"run_w_{direction}", weights)], f"cumlog_{direction}")
        products = g.op("Exp", [sums], f"cumprod_{direction}")
        runs[direction] = g.op(
            "ReduceSum", [products, g.const(f"axes_{direction}", _i64([1]))], f"run_{direction}", keepdims=1
        )
    left, up, right, down = runs["left"], runs["up"], runs["right"], runs["down"]

    # Score terms (each a logit; the score is the sigmoid of their minimum).
    def affine(x: str, gain: float, offset: float, name: str) -> str:
        scaled = g.op("Mul", [x, g.const(f"{name}_gain", _f32(gain))], f"{name}_scaled")
        return g.op("Add", [scaled, g.const(f"{name}_offset", _f32(offset))], name)

    def centredness(a: str, b: str, name: str) -> str:
        low = g.op("Min", [a, b], f"{name}_min")
        high = g.op("Max", [g.op("Max", [a, b], f"{name}_max"), scalar["eps"]], f"{name}_max_eps")
        return g.op("Div", [low, high], name)

    centre_x = centredness(left, right, "centre_x")
    centre_y = centredness(up, down, "centre_y")
    core_w = g.const("core_w", np.full((1, 1, 2, 2), 0.25, dtype=np.float32))
    core = g.op("Conv", [cells, core_w], "core", pads=[1, 1, 0, 0])
    nearest = g.op("Min", [left, up, right, down], "nearest_edge")
    farthest = g.op("Max", [left, up, right, down], "farthest_edge")
    logit = g.op(
        "Min",
        [
            affine(centre_x, _CENTRE_GAIN, -_CENTRE_GAIN * _CENTRE_MIN, "term_centre_x"),
            affine(centre_y, _CENTRE_GAIN, -_CENTRE_GAIN * _CENTRE_MIN, "term_centre_y"),
            affine(core, _BRIGHT_GAIN, -_BRIGHT_GAIN * _BRIGHT_MIN, "term_bright"),
            affine(nearest, _EDGE_GAIN, -_EDGE_GAIN * _EDGE_MIN_CELLS, "term_edge"),
            affine(farthest, -_REACH_GAIN, _REACH_GAIN * _REACH_LIMIT, "term_reach"),
        ],
        "logit_8",
    )
    score = g.op("Sigmoid", [g.op("Concat", [logit] * _ANCHORS, "logits_8", axis=1)], "scores_8")
    box = g.op("Concat", [left, up, right, down], "box_8", axis=1)  # stride units: one cell is one stride
    landmarks = g.op("Conv", [box, g.const("landmark_w", _landmark_weights())], "landmarks_8")

    heads: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    heads["score"].append(_flatten_head(g, score, 1, "score_8"))
    heads["bbox"].append(_flatten_head(g, g.op("Concat", [box] * _ANCHORS, "boxes_8", axis=1), 4, "bbox_8"))
    heads["kps"].append(_flatten_head(g, g.op("Concat", [landmarks] * _ANCHORS, "kpss_8", axis=1), 10, "kps_8"))

    # Strides 16 and 32: the right shapes, constant outputs, never above any threshold.
    template = (ARCFACE_TEMPLATE / 112.0 * 4.0 - 2.0).reshape(-1)  # on a 4x4-stride box centred on the anchor
    for stride in (16, 32):
        factor = stride // _CELL
        pooled = g.op("AveragePool", [cells], f"pool_{stride}", kernel_shape=[factor, factor], strides=[factor, factor])
        for kind, width, bias in (
            ("score", 1, np.full(1, -30.0)),
            ("bbox", 4, np.full(4, 2.0)),
            ("kps", 10, template),
        ):
            channels = width * _ANCHORS
            zero_w = g.const(f"{kind}_{stride}_w", np.zeros((channels, 1, 1, 1), dtype=np.float32))
            biases = g.const(f"{kind}_{stride}_b", _f32(np.tile(bias, _ANCHORS)))
            head = g.op("Conv", [pooled, zero_w, biases], f"{kind}_{stride}_conv")
            if kind == "score":
                head = g.op("Sigmoid", [head], f"{kind}_{stride}_sigmoid")
            heads[kind].append(_flatten_head(g, head, width, f"{kind}_{stride}"))

    outputs = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride, name in zip((8, 16, 32), heads[kind], strict=True):
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"anchors_{stride}", width]))
    graph = helper.make_graph(
        g.nodes,
        "facemint_demo_scrfd",
        [helper.make_tensor_value_info(image, TensorProto.FLOAT, [1, 3, "?", "?"])],
        outputs,
        initializer=g.initializers,
        doc_string="Facemint demo SCRFD detector: bright squares on a dark background are faces.",
    )
    return _model(graph, "detection", seed)


# --- recogniser -----------------------------------------------------------------------------------------------


def build_recognizer(seed: int = 0) -> onnx.ModelProto:
    weight, _, _ = _matrices(seed)
    g = _Graph()
    # Node names must not start with Sub/_minus and Mul/_mul: insightface would then assume in-graph
    # normalisation (mean 0, std 1) instead of 127.5/127.5.
    pooled = g.op("AveragePool", ["input.1"], "pool", kernel_shape=[_POOL, _POOL], strides=[_POOL, _POOL])
    flat = g.op("Flatten", [pooled], "flatten", axis=1)
    mean = g.op("ReduceMean", [flat], "feature_mean", axes=[1], keepdims=1)
    centred = g.op("Sub", [flat, mean], "centre")
    g.op("MatMul", [centred, g.const("fc_w", weight)], "embedding")
    graph = helper.make_graph(
        g.nodes,
        "facemint_demo_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", _EMBEDDING])],
        initializer=g.initializers,
        doc_string="Facemint demo ArcFace recogniser: the embedding encodes the crop's 8x8 colour layout.",
    )
    return _model(graph, "recognition", seed)


# --- swapper --------------------------------------------------------------------------------------------------


def build_swapper(seed: int = 0) -> onnx.ModelProto:
    _, decoder, emap = _matrices(seed)
    g = _Graph()
    layout = g.op("MatMul", ["source", g.const("decoder_w", decoder)], "layout")  # unit direction, 192 values
    scaled = g.op("Mul", [layout, g.const("amplitude", _f32(_SWAP_AMPLITUDE))], "layout_scaled")
    shifted = g.op("Add", [scaled, g.const("level", _f32(_SWAP_MEAN))], "layout_level")
    clipped = g.op("Clip", [shifted, g.const("layout_min", _f32(_SWAP_MIN)), g.const("one", _f32(1.0))], "layout_clip")
    unit = g.op("Mul", [g.op("Add", [clipped, "one"], "layout_plus_one"), g.const("half", _f32(0.5))], "layout_unit")
    grid = g.op("Reshape", [unit, g.const("grid_shape", _i64([1, 3, _GRID, _GRID]))], "layout_grid")
    face = g.op(
        "Resize",
        [grid, "", g.const("grid_scales", _f32([1.0, 1.0, float(_POOL), float(_POOL)]))],
        "face_112",
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    # In the 128 crop insightface aligns the face square to x 8..120, y 0..112 (norm_crop2's +8 px shift).
    crop_pads = g.const("crop_pads", _i64([0, 0, 0, 8, 0, 0, 16, 8]))
    face_128 = g.op("Pad", [face, crop_pads], "face_128")
    ones = g.op(
        "ConstantOfShape",
        [g.const("mask_shape", _i64([1, 1, 112, 112]))],
        "ones_112",
        value=numpy_helper.from_array(_f32([1.0])),
    )
    mask = g.op("Pad", [ones, crop_pads], "mask_128")
    painted = g.op("Mul", [face_128, g.const("source_share", _f32(1.0 - _SWAP_TARGET_SHARE))], "painted")
    keep = g.op(
        "Sub", [g.const("full", _f32(1.0)), g.op("Mul", [mask, "source_share"], "mask_share")], "target_share_map"
    )
    blended = g.op("Add", [g.op("Mul", ["target", keep], "target_kept"), painted], "blended")
    g.op("Clip", [blended, g.const("out_min", _f32(0.0)), "one"], "output")
    # insightface reads the emap as the *last* initializer; the real file's is `buff2fs`, unused by the graph.
    g.const("buff2fs", emap)
    graph = helper.make_graph(
        g.nodes,
        "facemint_demo_inswapper",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, _EMBEDDING]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=g.initializers,
        doc_string="Facemint demo INSwapper: paints the source embedding's colour layout over the target face.",
    )
    return _model(graph, "swapper", seed)


# --- enhancer -------------------------------------------------------------------------------------------------


def build_enhancer(seed: int = 0) -> onnx.ModelProto:
    """GFPGAN 1.4's contract (`input [1, 3, 512, 512]` -> `output [1, 3, 512, 512]`, RGB in [-1, 1]); computes
    `output = ENHANCER_GAIN * input + ENHANCER_RGB_OFFSET` per pixel, unclipped like the real model's output."""
    g = _Graph()
    gained = g.op("Mul", ["input", g.const("gain", _f32(ENHANCER_GAIN))], "contrast")
    offset = g.const("rgb_offset", _f32(ENHANCER_RGB_OFFSET).reshape(1, 3, 1, 1))
    g.op("Add", [gained, offset], "output")
    shape = [1, 3, ENHANCER_SIZE, ENHANCER_SIZE]
    graph = helper.make_graph(
        g.nodes,
        "facemint_demo_gfpgan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=g.initializers,
        doc_string="Facemint demo GFPGAN enhancer: a contrast stretch and a warm tint of the aligned crop.",
    )
    return _model(graph, "enhancer", seed)


# --- files ----------------------------------------------------------------------------------------------------


def _write_atomically(model: onnx.ModelProto, path: Path) -> None:
    data = model.SerializeToString(deterministic=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_demo_models(directory: Path, *, seed: int = 0, swapper_directory: Path | None = None) -> dict[str, Path]:
    """Write the four demo models and return their paths keyed `detection`, `recognition`, `swapper`, `enhancer`.

    The detector and recogniser go to `directory`. The swapper and the enhancer (`gfpgan_1.4.onnx`) go to
    `swapper_directory` when given, otherwise next to the others (the engine's layout: one directory). Keep both
    out of a directory that `FaceAnalysis` loads: it loads every `*.onnx` there, fails on the swapper, and routes
    the enhancer (one square 512x512 input) to `ArcFaceONNX`, where, sorted before `w600k_r50.onnx`, it would
    take the recogniser's place. Directories are created; existing files are replaced atomically. Prints
    nothing."""
    directory = Path(directory)
    swapper_dir = Path(swapper_directory) if swapper_directory is not None else directory
    directory.mkdir(parents=True, exist_ok=True)
    swapper_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "detection": directory / DETECTOR_FILE,
        "recognition": directory / RECOGNIZER_FILE,
        "swapper": swapper_dir / SWAPPER_FILE,
        "enhancer": swapper_dir / ENHANCER_FILE,
    }
    _write_atomically(build_detector(seed), paths["detection"])
    _write_atomically(build_recognizer(seed), paths["recognition"])
    _write_atomically(build_swapper(seed), paths["swapper"])
    _write_atomically(build_enhancer(seed), paths["enhancer"])
    return paths


def is_demo_model(path: Path | str) -> bool:
    """Whether the ONNX file at `path` is a Facemint demo model (metadata `facemint_demo=1`).

    Reads only the file's top-level metadata (cheap even for the real 0.5 GB swapper). A file that is not an
    ONNX model is not a demo model; a missing or unreadable file raises OSError."""
    try:
        metadata = read_model_metadata(path)
    except NotAnOnnxModel:
        return False
    return metadata.properties.get(DEMO_METADATA_KEY) == "1"


# --- drawing --------------------------------------------------------------------------------------------------


def demo_face_colours(identity: int) -> NDArray[np.uint8]:
    """The 4x4 grid of BGR tile colours (each channel 170..255) of the demo face with this identity."""
    rng = np.random.default_rng([identity, 0xFACE])
    return rng.integers(FACE_MIN_CHANNEL_MEAN, 256, size=(FACE_TILES, FACE_TILES, 3), dtype=np.uint8)


def draw_demo_face(
    image: NDArray[np.uint8], x: int, y: int, size: int, *, identity: int = 0
) -> tuple[float, float, float, float]:
    """Paint a demo face (a bright square of 4x4 coloured tiles) with its top-left corner at (x, y) into the BGR
    uint8 image, in place, and return the box (x1, y1, x2, y2) the demo detector reports for it.

    See the module docstring for the sizes, gaps and backgrounds that are detected reliably."""
    height, width = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be a BGR uint8 array of shape (height, width, 3)")
    if size < 1 or x < 0 or y < 0 or x + size > width or y + size > height:
        raise ValueError(f"face ({x}, {y}, size {size}) must lie inside the {width}x{height} image")
    colours = demo_face_colours(identity)
    edges = [round(i * size / FACE_TILES) for i in range(FACE_TILES + 1)]
    for row in range(FACE_TILES):
        for col in range(FACE_TILES):
            image[y + edges[row] : y + edges[row + 1], x + edges[col] : x + edges[col + 1]] = colours[row, col]
    return float(x), float(y), float(x + size), float(y + size)
