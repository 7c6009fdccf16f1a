"""Stand-in models: the real models' architectures, layer for layer, with random weights.

The demo models (`inference.models.demo`) make model compute nearly free; the stand-ins cost what the real files
cost. `write_standin_models(directory)` writes

* `det_10g.onnx`: SCRFD-10GF with keypoints (`standin_nets`), input `input.1` `[1, 3, '?', '?']`, nine rank-2
  outputs score/bbox/kps for strides 8/16/32 with 2 anchors, exactly the real file's contract, so insightface 2.1
  routes it to SCRFD and builds its per-resolution static sessions;
* `w600k_r50.onnx`: IResNet-50, `['None', 3, 112, 112]` -> `['None', 512]` (dynamic batch; node names that keep
  insightface's inferred normalisation at 127.5/127.5, as for the real file);
* `inswapper_128.onnx`: inswapper's encoder, six AdaIN style blocks and decoder (`standin_generators`), inputs
  `target [1, 3, 128, 128]` and `source [1, 512]`, output `[1, 3, 128, 128]` in [0, 1], last initializer the float32
  (512, 512) emap `buff2fs`, unused by the graph;
* `gfpgan_1.4.onnx`: GFPGANv1Clean (U-Net + StyleGAN2 decoder with modulated convs), `input [1, 3, 512, 512]` ->
  `output [1, 3, 512, 512]` (FaceFusion's face_enhancer contract, [-1, 1] in and out).

Pictures: each stand-in also carries its demo model's small graph (the "guide", node and tensor names under
`guide/`) and mixes the two: the outputs are the demo model's plus a bounded, small share of the real network's
(1 % of a detector score, 0.01 stride of a box, an embedding offset of norm 0.1 against about 20, 0.4 % of a pixel
for the swapper and enhancer; the enhancer's guide is the identity). ONNX Runtime cannot prune the real network, so
every stand-in still costs the real model's compute, memory and weights (the guide adds under 0.5 %), while the
engine finds, embeds and swaps demo faces (`draw_demo_face`) exactly as on the demo models. End-to-end benchmarks
therefore run the same pipeline on demo models (pipeline cost) and stand-ins (real compute). The real network on
its own produces noise.

Every file carries `metadata_props` `facemint_standin=1` (plus role, seed, version, architecture) and a doc_string
saying it is a stand-in; `is_standin_model(path)` reads only that metadata. `standin_counts(role)` computes
parameters and multiply-accumulates from the graph (shape inference, no weights drawn), next to the published
figures. Sizes: 17 MB, 174 MB, 554 MB and 340 MB, written by streaming each tensor (see `standin_graph`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.models.demo import (
    DETECTOR_FILE,
    ENHANCER_FILE,
    RECOGNIZER_FILE,
    SWAPPER_FILE,
    build_detector,
    build_recognizer,
    build_swapper,
)
from inference.models.metadata import NotAnOnnxModel, read_model_metadata
from inference.models.standin_generators import ENHANCER_SIZE, SWAPPER_LATENT, gfpgan_v14, inswapper
from inference.models.standin_graph import (
    Blueprint,
    Builder,
    Weight,
    count_blueprint,
    graft,
    shell_model,
    write_blueprint,
)
from inference.models.standin_nets import SCRFD_STRIDES, iresnet50, scrfd_10g_kps

STANDIN_METADATA_KEY: Final = "facemint_standin"
STANDIN_VERSION: Final = "1"
STANDIN_ROLES: Final = ("detector", "recognizer", "swapper", "enhancer")
STANDIN_FILES: Final[Mapping[str, str]] = {
    "detector": DETECTOR_FILE,
    "recognizer": RECOGNIZER_FILE,
    "swapper": SWAPPER_FILE,
    "enhancer": ENHANCER_FILE,
}
DEFAULT_DET_SIZE: Final = (640, 640)

# How much of the real network reaches each output (see the module docstring).
_SCORE_SHARE: Final = 0.01
_BOX_SHARE: Final = 0.01
_EMBEDDING_OFFSET: Final = 0.1
_PIXEL_SHARE: Final = 0.004
_NORM_EPS: Final = 1e-6


@dataclass(frozen=True)
class Published:
    """A real model's published figures. `flops` counts multiply-accumulates (one multiply-add is one FLOP, the
    convention of mmcv's get_flops, ptflops and the papers' tables)."""

    params: int | None
    flops: int | None
    flops_input: str
    file_bytes: int | None
    source: str


PUBLISHED: Final[Mapping[str, Published]] = {
    "detector": Published(
        params=4_230_000,
        flops=10_000_000_000,
        flops_input="VGA 640x480",
        file_bytes=16_923_827,
        source="deepinsight/insightface detection/scrfd/README.md (SCRFD_10G_KPS: 10G FLOPs, 4.23M params at VGA); "
        "det_10g.onnx size from the engine's manifest",
    ),
    "recognizer": Published(
        params=43_600_000,
        flops=6_300_000_000,
        flops_input="112x112",
        file_bytes=174_383_860,
        source="insightface arcface_torch IResNet-50 (43.6M params, 6.3 GFLOPs); w600k_r50.onnx size from the "
        "engine's manifest",
    ),
    "swapper": Published(
        params=None,
        flops=None,
        flops_input="128x128",
        file_bytes=554_253_681,
        source="inswapper_128.onnx size from the engine's manifest; architecture per somanchiu/ReSwapper "
        "StyleTransferModel_128.py (no published parameter or FLOP count)",
    ),
    "enhancer": Published(
        params=None,
        flops=None,
        flops_input="512x512",
        file_bytes=340_299_087,
        source="FaceFusion's gfpgan_1.4.onnx size from the engine's manifest (OPTIONAL_MODELS); TencentARC/GFPGAN "
        "v1.3.0 release GFPGANv1.4.pth is 348,632,874 bytes, the same weights plus the 2.1M-parameter style MLP the "
        "ONNX export drops; architecture per gfpgan/archs/gfpganv1_clean_arch.py",
    ),
}

ARCHITECTURES: Final[Mapping[str, str]] = {
    "detector": "SCRFD-10GF with keypoints (scrfd_10g_bnkps)",
    "recognizer": "IResNet-50 (arcface_torch iresnet50, 512-d)",
    "swapper": "inswapper_128 (encoder, 6 AdaIN style blocks at 1024 channels, decoder)",
    "enhancer": "GFPGAN 1.4 (GFPGANv1Clean, 512, channel multiplier 2)",
}


@dataclass(frozen=True)
class StandinCounts:
    """What a stand-in holds and computes, from its graph at the canonical input size.

    `params` counts every initializer element in the file (the swapper's emap included), `flops` every Conv, Gemm
    and MatMul multiply-accumulate (the published figures' convention; twice that in arithmetic operations).
    `guide_*` are the demo guide's share of each; `network_*` the real architecture's. `activation_bytes` sums every
    intermediate float tensor (an upper bound of activation memory: the runtime reuses buffers)."""

    role: str
    file: str
    architecture: str
    input_shapes: Mapping[str, tuple[int, ...]]
    params: int
    flops: int
    guide_params: int
    guide_flops: int
    weight_bytes: int
    activation_bytes: int
    published: Published

    @property
    def network_params(self) -> int:
        return self.params - self.guide_params

    @property
    def network_flops(self) -> int:
        return self.flops - self.guide_flops


def _output(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _detector(seed: int, det_size: tuple[int, int]) -> Blueprint:
    b = Builder()
    heads = scrfd_10g_kps(b, "input.1")
    demo = build_detector(seed)
    renamed = graft(b, demo)
    guide = [renamed[value.name] for value in demo.graph.output]
    real = [*heads["score"], *heads["bbox"], *heads["kps"]]
    outputs = []
    layout = [
        (kind, width, stride) for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)) for stride in SCRFD_STRIDES
    ]
    for index, (kind, width, stride) in enumerate(layout):
        name = f"{kind}_{stride}"
        if kind == "score":
            mixed = b.add(
                b.mul(guide[index], b.scalar(1.0 - _SCORE_SHARE), f"mix/{name}_guide"),
                b.mul(real[index], b.scalar(_SCORE_SHARE), f"mix/{name}_net"),
                name,
            )
        else:
            offset = b.mul(b.op("Tanh", [real[index]], f"mix/{name}_tanh"), b.scalar(_BOX_SHARE), f"mix/{name}_net")
            mixed = b.add(guide[index], offset, name)
        outputs.append(_output(mixed, [f"anchors_{stride}", width]))
    width, height = det_size
    return b.blueprint(
        "facemint_standin_scrfd_10g_kps",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        outputs,
        doc_string="SCRFD-10GF-KPS stand-in: random weights, steered by the demo detector.",
        canonical_inputs={"input.1": [1, 3, height, width]},
    )


def _recognizer(seed: int) -> Blueprint:
    b = Builder()
    embedding = iresnet50(b, "input.1")  # first, so the first node names are the network's (conv1, prelu, ...)
    demo = build_recognizer(seed)
    guide = graft(b, demo)[demo.graph.output[0].name]
    norm = b.op("ReduceL2", [embedding], "mix/norm", axes=[1], keepdims=1)
    unit = b.op("Div", [embedding, b.add(norm, b.scalar(_NORM_EPS), "mix/norm_eps")], "mix/unit")
    final = b.add(guide, b.mul(unit, b.scalar(_EMBEDDING_OFFSET), "mix/offset"), "embedding")
    return b.blueprint(
        "facemint_standin_iresnet50",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [_output(final, ["None", 512])],
        doc_string="IResNet-50 stand-in: random weights, steered by the demo recogniser.",
        canonical_inputs={"input.1": [1, 3, 112, 112]},
    )


def _swapper(seed: int) -> Blueprint:
    b = Builder()
    swapped = inswapper(b, "target", "source")
    demo = build_swapper(seed)
    emap = demo.graph.initializer[-1]
    guide = graft(b, demo, keep=[emap.name])[demo.graph.output[0].name]
    centred = b.op("Sub", [swapped, b.scalar(0.5)], "mix/centred")
    mixed = b.add(guide, b.mul(centred, b.scalar(_PIXEL_SHARE), "mix/offset"), "mix/sum")
    final = b.op("Clip", [mixed, b.scalar(0.0), b.scalar(1.0)], "output")
    # insightface reads the emap as the *last* initializer (the real file's `buff2fs`, unused by the graph).
    b.add_weight(Weight("buff2fs", (SWAPPER_LATENT, SWAPPER_LATENT), value=numpy_helper.to_array(emap)))
    return b.blueprint(
        "facemint_standin_inswapper_128",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, SWAPPER_LATENT]),
        ],
        [_output(final, [1, 3, 128, 128])],
        doc_string="inswapper_128 stand-in: random weights, steered by the demo swapper.",
        canonical_inputs={},
    )


def _enhancer() -> Blueprint:
    b = Builder()  # the guide is the identity: no demo graph to graft
    restored = gfpgan_v14(b, "input")
    offset = b.mul(b.op("Tanh", [restored], "mix/tanh"), b.scalar(_PIXEL_SHARE), "mix/offset")
    final = b.add("input", offset, "output")
    shape: list[int | str] = [1, 3, ENHANCER_SIZE, ENHANCER_SIZE]
    return b.blueprint(
        "facemint_standin_gfpgan_1_4",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [_output(final, shape)],
        doc_string="GFPGAN 1.4 stand-in: random weights around an identity guide.",
        canonical_inputs={},
    )


def build_standin_blueprint(role: str, *, seed: int = 0, det_size: tuple[int, int] = DEFAULT_DET_SIZE) -> Blueprint:
    """The stand-in for `role` as a Blueprint (the graph, its weights as specifications). `det_size` (width,
    height) is only the detector's canonical size for counting; the file's input stays dynamic."""
    if role == "detector":
        return _detector(seed, det_size)
    if role == "recognizer":
        return _recognizer(seed)
    if role == "swapper":
        return _swapper(seed)
    if role == "enhancer":
        return _enhancer()
    raise ValueError(f"unknown stand-in role {role!r}; expected one of {', '.join(STANDIN_ROLES)}")


def standin_counts(role: str, *, det_size: tuple[int, int] = DEFAULT_DET_SIZE) -> StandinCounts:
    """Parameters and multiply-accumulates of the stand-in for `role`, computed from its graph without drawing
    weights or writing a file. The detector is counted at `det_size` (width, height; the published SCRFD figures
    are at VGA, `(640, 480)`); the others at their fixed sizes (112, 128, 512)."""
    blueprint = build_standin_blueprint(role, det_size=det_size)
    counts = count_blueprint(blueprint)
    shapes = {
        value.name: tuple(
            blueprint.canonical_inputs.get(value.name) or [d.dim_value for d in value.type.tensor_type.shape.dim]
        )
        for value in blueprint.inputs
    }
    return StandinCounts(
        role=role,
        file=STANDIN_FILES[role],
        architecture=ARCHITECTURES[role],
        input_shapes=shapes,
        params=counts.params,
        flops=counts.flops,
        guide_params=counts.guide_params,
        guide_flops=counts.guide_flops,
        weight_bytes=sum(w.size * w.dtype.itemsize for w in blueprint.weights),
        activation_bytes=counts.activation_bytes,
        published=PUBLISHED[role],
    )


def write_standin_models(directory: Path, *, seed: int = 0, roles: Iterable[str] = STANDIN_ROLES) -> dict[str, Path]:
    """Write the stand-ins for `roles` into `directory` (created if needed; existing files replaced atomically)
    and return their paths keyed by role. Weights come from `numpy.random.default_rng([seed, role, tensor])`, so a
    seed gives byte-identical files. About 8 s and 1.1 GB of disk for all four on a 2-core machine."""
    wanted = list(dict.fromkeys(roles))
    for role in wanted:
        if role not in STANDIN_ROLES:
            raise ValueError(f"unknown stand-in role {role!r}; expected one of {', '.join(STANDIN_ROLES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for role in wanted:
        blueprint = build_standin_blueprint(role, seed=seed)
        shell = shell_model(
            blueprint,
            producer="facemint-standin",
            version=STANDIN_VERSION,
            doc_string=(
                f"Facemint stand-in model ({role}): {ARCHITECTURES[role]} with random weights, not a real face "
                "model. It costs what the real model costs; a demo-model guide path steers its outputs."
            ),
            metadata={
                STANDIN_METADATA_KEY: "1",
                "facemint_standin_role": role,
                "facemint_standin_seed": str(seed),
                "facemint_standin_version": STANDIN_VERSION,
                "facemint_standin_architecture": ARCHITECTURES[role],
            },
        )
        path = directory / STANDIN_FILES[role]
        write_blueprint(blueprint, path, shell=shell, seed=[seed, STANDIN_ROLES.index(role)])
        paths[role] = path
    return paths


def is_standin_model(path: Path | str) -> bool:
    """Whether the ONNX file at `path` is a Facemint stand-in (metadata `facemint_standin=1`). Reads only the
    file's top-level metadata, never the weights. A file that is not an ONNX model is not a stand-in; a missing or
    unreadable file raises OSError."""
    try:
        metadata = read_model_metadata(path)
    except NotAnOnnxModel:
        return False
    return metadata.properties.get(STANDIN_METADATA_KEY) == "1"
